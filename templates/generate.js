// Generating a reply: streams the assistant's answer into the page as it arrives.
import { errorMessage, postChat, readEvents } from './api.js';
import { askKey, refusedMessage } from './keyform.js';
import { LiveMarkdown } from './markdown-dom.js';
import { ensureProps } from './props.js';
import { LiveThinking, pieces } from './reasoning.js';
import { renderSidebar } from './sidebar.js';
import { state, systemOf } from './state.js';
import { saveConv } from './store.js';
import { el, messageNode, nearBottom, renderMessages, scrollToEnd, setBusy, updateStats } from './view.js';

export const stopGeneration = () => { if (state.gen) state.gen.controller.abort(); };

const whenAborted = (signal) => new Promise((resolve) => {
  if (signal.aborted) resolve();
  else signal.addEventListener('abort', resolve, { once: true });
});

// Only role and content go back to the server (a reply's reasoning stays on the page).
function requestMessages(c) {
  const messages = [], system = systemOf(c);
  if (system.trim()) messages.push({ role: 'system', content: system });
  for (const m of c.messages) if (m.role === 'user' || m.role === 'assistant') messages.push({ role: m.role, content: m.content });
  return messages;
}

// Asks for the next assistant message of the conversation on screen.
export async function generate() {
  const c = state.conv;
  const controller = new AbortController();
  const reply = { role: 'assistant', content: '' };
  state.gen = { controller, conv: c };
  setBusy(true);
  renderMessages();
  const live = messageNode(reply, ' streaming');
  const md = new LiveMarkdown(live.querySelector('.content'));
  const thinking = new LiveThinking(live);
  el.messages.append(live);
  scrollToEnd();

  let t0 = 0, count = 0, usage = null, timings = null, finish = null;
  let error = null, stopped = false, needKey = false, painting = false;
  const paint = () => {
    if (painting) return;
    painting = true;
    requestAnimationFrame(() => {
      painting = false;
      const stick = nearBottom();
      thinking.render();
      md.render(); // only the block still open is rebuilt
      if (stick) scrollToEnd();
    });
  };

  try {
    // A message sent as the page opens waits for /props, so that it names the right
    // model and carries the server's default system prompt.
    await Promise.race([ensureProps(), whenAborted(controller.signal)]);
    if (state.propsLoaded && c.system == null) c.system = systemOf(c);
    const res = await postChat({ model: state.props.model, messages: requestMessages(c), signal: controller.signal });
    if (res.status === 401) needKey = true;
    else if (!res.ok) error = await errorMessage(res);
    else {
      await readEvents(res.body, (d) => {
        if (d.error) { error = d.error.message || String(d.error); return; }
        const choice = d.choices?.[0];
        const { content, reasoning } = pieces(choice?.delta);
        if (content || reasoning) {
          if (!t0) t0 = performance.now();
          count++;
          paint();
        }
        if (reasoning) {
          reply.reasoning = (reply.reasoning || '') + reasoning;
          thinking.append(reasoning);
        }
        if (content) {
          reply.content += content;
          md.append(content);
          thinking.end();
        }
        if (choice?.finish_reason) finish = choice.finish_reason;
        if (d.usage) usage = d.usage;
        if (d.timings) timings = d.timings;
      });
    }
  } catch (e) {
    if (e && e.name === 'AbortError') stopped = true;
    else error = `Could not reach the server: ${e && e.message ? e.message : e}`;
  }
  if (controller.signal.aborted) stopped = true;
  const seconds = t0 ? (performance.now() - t0) / 1000 : 0;

  state.gen = null;
  live.classList.remove('streaming');
  thinking.render();
  thinking.end();
  md.render();
  if (reply.content || reply.reasoning || (!stopped && !error && !needKey)) {
    reply.finish = stopped ? 'stopped' : finish;
    if (usage) reply.usage = { completion_tokens: usage.completion_tokens, total_tokens: usage.total_tokens };
    const tokens = usage?.completion_tokens ?? count;
    const tps = timings?.predicted_per_second ?? (seconds > 0 && tokens ? tokens / seconds : null);
    if (tps && Number.isFinite(tps)) reply.tps = tps;
    c.messages.push(reply);
  }
  if (error) c.messages.push({ role: 'error', content: error });
  saveConv(c);
  setBusy(false);
  renderMessages(); // also after a switch mid-reply: the shown chat gets its buttons back
  updateStats();
  renderSidebar();
  if (needKey) {
    askKey(refusedMessage(), () => { if (state.conv === c && !state.gen) generate(); });
  } else if (document.activeElement === el.stop || document.activeElement === document.body) {
    el.prompt.focus();
  }
}
