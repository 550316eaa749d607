"""The changes llamabundle makes to ggml's sources before building a backend module, one
definition for the Linux builds (bundler/backend.sh runs this file) and the Windows one
(bundler/windows/llama.py). Each change names the code it expects, and stops the build in
one line when ggml's code has moved on, rather than building something unchanged.

usage: python3 bundler/ggml_source.py vulkan|rpc path/to/llama.cpp
"""

from __future__ import annotations

import sys
from pathlib import Path

MARK = "llamabundle:"


class SourceChanged(Exception):
    """ggml's code is not what a change expects: bundler/ggml_source.py needs updating."""


def _replace(text: str, old: str, new: str, where: str) -> str:
    if text.count(old) != 1:
        raise SourceChanged(f"{where} no longer has the code bundler/ggml_source.py changes; update it")
    return text.replace(old, new)


# Debian 12's Vulkan headers (1.3.239) predate VK_EXT_layer_settings (1.3.272), which
# ggml-vulkan.cpp uses only to switch on the validation layer's best-practice checks when
# that layer is installed; the headers' own macro guards it, so newer headers build
# ggml's code unchanged.
VK_START = "    VkBool32 enable_best_practice = layer_settings;"
VK_END = "&layer_setting_info);\n"
VK_GUARD = f"#ifdef VK_EXT_layer_settings  /* {MARK} Debian 12's headers lack it */\n"
VK_PLAIN = (
    "#else\n    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, "
    "layers, extensions);\n#endif\n"
)


def vulkan(llama_src: Path) -> None:
    path = llama_src / "ggml" / "src" / "ggml-vulkan" / "ggml-vulkan.cpp"
    text = path.read_text()
    if MARK in text:
        return
    start = text.find(VK_START)
    end = text.find(VK_END, start)
    if start < 0 or end < 0:
        raise SourceChanged(
            f"{path.name} no longer has the layer-settings code; update bundler/ggml_source.py"
        )
    end += len(VK_END)
    path.write_text(text[:start] + VK_GUARD + text[start:end] + VK_PLAIN + text[end:])


# ggml's RPC client aborts the whole process when a worker's socket fails (a worker killed,
# a machine switched off): the leader's server would die with it. Instead the connection
# marks itself failed, answers what is asked of it with zeros, and says which worker went
# away through llamabundle_rpc_failed(), which the runtime asks after every step to fail
# that request in words (runtime/llama/rpc.py). The reply is never used: the step fails.
RPC_STATE = f"""
// {MARK} the first worker whose connection failed, for the runtime to report.
static std::mutex llamabundle_failed_mutex;
static std::string llamabundle_failed;
static void llamabundle_rpc_fail(const std::string & endpoint) {{
    std::lock_guard<std::mutex> lock(llamabundle_failed_mutex);
    if (llamabundle_failed.empty()) {{
        llamabundle_failed = endpoint;
        GGML_LOG_ERROR("RPC worker %s went away\\n", endpoint.c_str());
    }}
}}
static const char * llamabundle_rpc_failed(void) {{
    std::lock_guard<std::mutex> lock(llamabundle_failed_mutex);
    return llamabundle_failed.empty() ? nullptr : llamabundle_failed.c_str();
}}

static void rpc_dispatcher_trampoline("""
RPC_CHANGES = [
    ("\nstatic void rpc_dispatcher_trampoline(", RPC_STATE),
    ("    std::atomic_bool running;\n    std::thread      thread;\n};",
     f"    std::atomic_bool running;\n    std::thread      thread;\n    std::string      endpoint;  // {MARK}\n"
     "    bool             failed = false;\n};"),
    ("    running = true;\n    thread = std::thread(rpc_dispatcher_trampoline, this);",
     "    this->endpoint = endpoint;\n    running = true;\n    thread = std::thread(rpc_dispatcher_trampoline, this);"),
    ("""        if (msg_ptr->cmd != RPC_CMD_NONE) {
            if (msg_ptr->output) {
                bool status = send_rpc_cmd(sock, msg_ptr->cmd, msg_ptr->input.get(), msg_ptr->input_size, msg_ptr->output, msg_ptr->output_size);
                RPC_STATUS_ASSERT(status);
            } else {
                bool status = send_rpc_cmd(sock, msg_ptr->cmd, msg_ptr->input.get(), msg_ptr->input_size);
                RPC_STATUS_ASSERT(status);
            }
        }""",
     f"""        if (msg_ptr->cmd != RPC_CMD_NONE && !failed) {{  // {MARK} a failure fails the step
            bool status = msg_ptr->output
                ? send_rpc_cmd(sock, msg_ptr->cmd, msg_ptr->input.get(), msg_ptr->input_size, msg_ptr->output, msg_ptr->output_size)
                : send_rpc_cmd(sock, msg_ptr->cmd, msg_ptr->input.get(), msg_ptr->input_size);
            if (!status) {{
                failed = true;
                llamabundle_rpc_fail(endpoint);
            }}
        }}
        if (failed && msg_ptr->output) {{
            memset(msg_ptr->output, 0, msg_ptr->output_size);
        }}"""),
    ("""    if (std::strcmp(name, "ggml_backend_rpc_start_server") == 0) {
        return (void *)ggml_backend_rpc_start_server;
    }""",
     f"""    if (std::strcmp(name, "ggml_backend_rpc_start_server") == 0) {{
        return (void *)ggml_backend_rpc_start_server;
    }}
    if (std::strcmp(name, "llamabundle_rpc_failed") == 0) {{  // {MARK}
        return (void *)llamabundle_rpc_failed;
    }}"""),
]  # fmt: skip


def rpc(llama_src: Path) -> None:
    path = llama_src / "ggml" / "src" / "ggml-rpc" / "ggml-rpc.cpp"
    text = path.read_text()
    if MARK in text:
        return
    for old, new in RPC_CHANGES:
        text = _replace(text, old, new, path.name)
    path.write_text(text)


CHANGES = {"vulkan": vulkan, "rpc": rpc}

if __name__ == "__main__":
    try:
        CHANGES[sys.argv[1]](Path(sys.argv[2]))
    except (SourceChanged, OSError) as e:
        sys.exit(f"error: {e}")
