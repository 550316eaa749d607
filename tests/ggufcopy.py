"""Write a copy of a GGUF with extra metadata, using the gguf package's reader and writer."""

from __future__ import annotations

from pathlib import Path

import gguf

from bundler.gguf_info import copy_metadata, copy_tensors

CHATML = (  # ChatML, opening with the BOS token as real templates do
    "{{ bos_token }}{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def copy_with(src: Path, dst: Path, extra: dict[str, str]) -> Path:
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.get_field("general.architecture").contents())
    copy_metadata(reader, writer, skip=lambda key: key in extra)
    for key, value in extra.items():
        writer.add_string(key, value)
    copy_tensors(reader, writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
