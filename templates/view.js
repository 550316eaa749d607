// The page's elements and the conversation view: messages, their buttons, usage figures.
import { fmt, h, icon, lastIndex } from './dom.js';
import { renderMarkdown } from './markdown-dom.js';
import { thinkingNode } from './reasoning.js';
import { state } from './state.js';

const $ = (id) => document.getElementById(id);
export const el = {
  prompt: $('prompt'), send: $('send'), stop: $('stop'), composer: $('composer'),
  newChat: $('new-chat'), toggle: $('toggle-sidebar'), main: $('main'), scrim: $('scrim'),
  messages: $('messages'), convs: $('conversations'), model: $('model-name'), note: $('template-note'),
  ctx: $('ctx-used'), tps: $('tps'), device: $('device'), system: $('system-prompt'), sysPreview: $('sys-preview'),
  keyForm: $('key-form'), keyInput: $('api-key'), keyMsg: $('key-msg'), keyCancel: $('key-cancel'), keyRemember: $('key-remember'),
};

// What the message buttons do (set by chat.js).
export const actions = { edit: () => {}, regenerate: () => {} };

export const nearBottom = () => el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 80;

export function scrollToEnd() {
  el.messages.scrollTop = el.messages.scrollHeight;
}

function actionButton(cls, name, label, handler) {
  return h('button', { type: 'button', class: `btn-icon ${cls}`, 'aria-label': label, title: label, click: handler },
    icon(name));
}

// One node per message object, kept across renders so that the live region only
// announces what is new instead of the whole conversation again.
const nodes = new WeakMap();
export function messageNode(m, extra = '') {
  const role = m.role === 'user' || m.role === 'assistant' ? m.role : 'error';
  const content = h('div', { class: 'content' });
  if (role === 'assistant') renderMarkdown(content, m.content);
  else content.textContent = m.content;
  const thought = role === 'assistant' && typeof m.reasoning === 'string' && m.reasoning; // folded away, above
  const node = h('div', { class: `msg ${role}${extra}` }, thought ? thinkingNode(thought) : null, content);
  nodes.set(m, node);
  return node;
}

function metaText(m) {
  const parts = [];
  const n = m.usage?.completion_tokens;
  if (n != null) parts.push(`${fmt(n)} tokens`);
  if (m.tps) parts.push(`${m.tps.toFixed(1)} tok/s`);
  if (m.finish === 'length') parts.push('stopped at the length limit');
  else if (m.finish === 'stopped') parts.push('stopped');
  if (!m.content && m.finish !== 'stopped') parts.push('empty reply');
  return parts.join(' \u00b7 ');
}

function setActions(node, m, opts) {
  const buttons = [];
  if (opts.edit) buttons.push(actionButton('edit', 'edit', 'Edit message', () => actions.edit()));
  if (opts.regenerate) buttons.push(actionButton('regenerate', 'regenerate', 'Regenerate reply', () => actions.regenerate()));
  if (opts.retry) buttons.push(actionButton('retry', 'regenerate', 'Retry', () => actions.regenerate()));
  const meta = m.role === 'assistant' ? metaText(m) : '';
  const old = node.querySelector(':scope > .actions');
  const next = buttons.length || meta
    ? h('div', { class: 'actions' }, ...buttons, meta ? h('span', { class: 'meta', text: meta }) : null) : null;
  if (old && next && old.isEqualNode(next)) return;
  if (old) old.remove();
  if (next) node.append(next);
}

function emptyNode() {
  const { greeting, model } = state.props;
  if (greeting) return h('div', { class: 'msg assistant greeting' }, renderMarkdown(h('div', { class: 'content' }), greeting));
  return h('div', { class: 'empty' },
    h('p', { class: 'empty-title', text: model || 'llamabundle' }),
    h('p', { text: 'Type a message below to start a conversation.' }));
}

// Brings #messages in line with the conversation on screen.
export function renderMessages() {
  const box = el.messages;
  const stick = nearBottom(), top = box.scrollTop, msgs = state.conv.messages;
  const list = msgs.length ? [] : [emptyNode()];
  const idle = !state.gen, lastUser = lastIndex(msgs, (m) => m.role === 'user');
  const lastAsst = lastIndex(msgs, (m) => m.role === 'assistant');
  msgs.forEach((m, i) => {
    const node = nodes.get(m) || messageNode(m);
    setActions(node, m, {
      edit: idle && i === lastUser,
      regenerate: idle && i === lastAsst && lastAsst > lastUser,
      retry: idle && i === msgs.length - 1 && lastUser >= 0 && lastAsst < lastUser,
    });
    list.push(node);
  });
  list.forEach((node, i) => { if (box.children[i] !== node) box.insertBefore(node, box.children[i] || null); });
  while (box.children.length > list.length) box.lastElementChild.remove();
  box.scrollTop = stick ? box.scrollHeight : top;
}

export function updateStats() {
  const msgs = state.conv ? state.conv.messages : [];
  const withUsage = msgs[lastIndex(msgs, (m) => m.role === 'assistant' && m.usage?.total_tokens != null)];
  const used = withUsage ? withUsage.usage.total_tokens : 0, n = state.props.n_ctx;
  el.ctx.textContent = `${fmt(used)} / ${n ? fmt(n) : '\u2013'} tokens`;
  el.ctx.classList.toggle('warn', Boolean(n && used / n > 0.9));
  const last = msgs[lastIndex(msgs, (m) => m.role === 'assistant')];
  el.tps.textContent = last && last.tps ? `${last.tps.toFixed(1)} tok/s` : '\u2013 tok/s';
  el.device.textContent = state.props.device ? `on ${state.props.device}` : '';
  el.device.title = state.props.device_why || 'Where the model runs';
}

export function updatePreview() {
  const s = el.system.value.replace(/\s+/g, ' ').trim();
  el.sysPreview.textContent = s ? `\u00b7 ${s}` : '\u00b7 none';
}

export function setBusy(busy) {
  document.body.classList.toggle('busy', busy);
  el.send.disabled = busy;
  el.stop.disabled = !busy;
  el.messages.setAttribute('aria-busy', String(busy));
}
