// The thinking of reasoning models. A server that separates it (llama-server, vLLM) sends
// it as `reasoning_content` beside `content`, in streamed deltas and in whole messages;
// the page shows it folded away under a "Thinking" disclosure above the reply. It is saved
// with the assistant message (as `reasoning`) but never sent back to the server.
import { h } from './dom.js';
import { LiveMarkdown, renderMarkdown } from './markdown-dom.js';

const text = (v) => (typeof v === 'string' ? v : '');

// The text in one streamed delta (or one whole message): { content, reasoning }, both
// strings. Some servers name the field `reasoning`; one sending both gets it once.
export function pieces(delta) {
  const d = delta && typeof delta === 'object' ? delta : {};
  return { content: text(d.content), reasoning: text(d.reasoning_content) || text(d.reasoning) };
}

// The text of a list of deltas, put together: { content, reasoning }.
export function accumulate(deltas) {
  const out = { content: '', reasoning: '' };
  for (const d of deltas) {
    const p = pieces(d);
    out.content += p.content;
    out.reasoning += p.reasoning;
  }
  return out;
}

const LABEL = 'Thinking', LIVE_LABEL = 'Thinking\u2026';

// The disclosure for a saved message's reasoning (Markdown, like the reply), closed:
// <details class="thinking"><summary>Thinking</summary><div class="thinking-body">.
export const thinkingNode = (reasoning) => h('details', { class: 'thinking' },
  h('summary', { text: LABEL }), renderMarkdown(h('div', { class: 'thinking-body' }), reasoning));

// Reasoning streamed into a message's node `msg`: the disclosure is made, at the top of
// msg, with the first piece, and labelled "Thinking…" until end(). As with LiveMarkdown,
// append() takes text and render() shows it; done, it equals thinkingNode() of the text.
export class LiveThinking {
  constructor(msg) {
    this.msg = msg;
    this.node = null;
    this.summary = null;
    this.md = null;
  }

  append(piece) {
    if (!piece) return;
    if (!this.node) {
      const body = h('div', { class: 'thinking-body' });
      this.md = new LiveMarkdown(body);
      this.summary = h('summary', { text: LIVE_LABEL });
      this.node = h('details', { class: 'thinking live' }, this.summary, body);
      this.msg.prepend(this.node);
    }
    this.md.append(piece);
  }

  render() {
    if (this.md) this.md.render();
  }

  // The thinking is over: the reply has begun, or the stream has ended.
  end() {
    if (!this.node || this.node.className === 'thinking') return;
    this.node.className = 'thinking';
    this.summary.textContent = LABEL;
  }
}
