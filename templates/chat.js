// llamabundle web chat. Plain ES2020, no dependencies; all DOM is built with
// createElement/textContent so the page runs under a strict Content-Security-Policy.
'use strict';

(() => {
  const PREFIX = 'llamabundle.';
  const $ = (id) => document.getElementById(id);
  const el = {
    prompt: $('prompt'), send: $('send'), stop: $('stop'), composer: $('composer'),
    newChat: $('new-chat'), toggle: $('toggle-sidebar'), main: $('main'), scrim: $('scrim'),
    messages: $('messages'), convs: $('conversations'), model: $('model-name'), note: $('template-note'),
    ctx: $('ctx-used'), tps: $('tps'), system: $('system-prompt'), sysPreview: $('sys-preview'),
    keyForm: $('key-form'), keyInput: $('api-key'), keyMsg: $('key-msg'), keyCancel: $('key-cancel'),
  };

  // ---- storage ------------------------------------------------------------------
  const store = {
    get(k) { try { return localStorage.getItem(PREFIX + k); } catch { return null; } },
    set(k, v) { try { localStorage.setItem(PREFIX + k, v); } catch { /* full or disabled */ } },
    del(k) { try { localStorage.removeItem(PREFIX + k); } catch { /* disabled */ } },
  };

  let props = { model: '', n_ctx: 0, system_prompt: '', chat_template: true, greeting: '', api_key_required: false };
  let propsLoaded = false, keyRetry = null, apiKey = store.get('apiKey') || '';
  let conv = null; // the conversation on screen
  let gen = null; // { controller, conv } while a reply is being generated

  // ---- small helpers ------------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (typeof v === 'function') node.addEventListener(k, v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    node.append(...kids.filter((x) => x != null));
    return node;
  }

  const ICONS = {
    edit: 'M4 20h4L19 9l-4-4L4 16v4zM13.5 6.5l4 4',
    regenerate: 'M20 12a8 8 0 1 1-2.34-5.66M20 4v5h-5',
    trash: 'M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3',
  };
  function icon(name) {
    const svg = el.send.querySelector('svg').cloneNode(false); // an empty <svg class="icon"> to fill
    const path = document.createElementNS(svg.namespaceURI, 'path');
    path.setAttribute('d', ICONS[name]);
    svg.append(path);
    return svg;
  }

  const fmt = (n) => Number(n).toLocaleString('en-US');
  const lastIndex = (arr, pred) => { for (let i = arr.length - 1; i >= 0; i--) if (pred(arr[i])) return i; return -1; };
  const isPhone = window.matchMedia('(max-width: 760px)');
  const authHeaders = (extra) => (apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : { ...extra });

  // ---- conversations --------------------------------------------------------------
  function newConv() {
    const id = Date.now().toString(36) + Math.random().toString(36).slice(2, 7);
    return { id, title: '', system: null, messages: [], updated: Date.now() };
  }

  function titleOf(c) {
    const first = c.messages.find((m) => m.role === 'user');
    const t = first ? first.content.replace(/\s+/g, ' ').trim() : '';
    return t.length > 48 ? `${t.slice(0, 47).trimEnd()}\u2026` : t || 'New chat';
  }

  function saveConv(c, touch = true) {
    if (c.deleted) return;
    if (!c.messages.length) { store.del(`conv.${c.id}`); return; }
    if (touch) c.updated = Date.now();
    c.title = titleOf(c);
    store.set(`conv.${c.id}`, JSON.stringify(c));
  }

  function parseConv(text) {
    let c = null;
    try { c = JSON.parse(text); } catch { /* damaged entry */ }
    return c && typeof c.id === 'string' && Array.isArray(c.messages) ? c : null;
  }

  function listConvs() {
    const out = [];
    try {
      for (let i = 0; i < localStorage.length; i++) {
        const k = localStorage.key(i);
        if (!k || !k.startsWith(`${PREFIX}conv.`)) continue;
        const c = parseConv(localStorage.getItem(k));
        if (c) out.push(c);
      }
    } catch { /* storage disabled */ }
    return out.sort((a, b) => (b.updated || 0) - (a.updated || 0));
  }

  const systemOf = (c) => (c.system ?? props.system_prompt ?? '');

  function showConv(c) {
    conv = c;
    store.set('current', c.id);
    el.system.value = systemOf(c);
    updatePreview();
    renderMessages();
    updateStats();
    renderSidebar();
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  function selectConv(id) {
    if (gen) stopGeneration();
    const c = parseConv(store.get(`conv.${id}`));
    if (!c) { renderSidebar(); return; }
    showConv(c);
    if (isPhone.matches) setSidebar(false);
    el.prompt.focus();
  }

  function startNewChat() {
    if (gen) stopGeneration();
    if (conv.messages.length) showConv(newConv());
    if (isPhone.matches) setSidebar(false);
    el.prompt.focus();
  }

  function deleteConv(id) {
    const list = listConvs();
    const at = list.findIndex((c) => c.id === id);
    if (gen && gen.conv.id === id) { gen.conv.deleted = true; stopGeneration(); }
    store.del(`conv.${id}`);
    if (conv.id === id) {
      const next = list.find((c) => c.id !== id);
      showConv(next ? parseConv(store.get(`conv.${next.id}`)) || newConv() : newConv());
    } else renderSidebar();
    const buttons = el.convs.querySelectorAll('button.conversation');
    (buttons[Math.min(at, buttons.length - 1)] || el.newChat).focus();
  }

  function renderSidebar() {
    const list = listConvs();
    if (!list.length) { el.convs.replaceChildren(h('p', { class: 'conv-empty', text: 'No saved chats yet.' })); return; }
    const ul = h('ul', { class: 'conv-list' });
    for (const c of list) {
      const current = c.id === conv.id;
      const title = c.title || titleOf(c);
      ul.append(h('li', { class: `conv-item${current ? ' active' : ''}` },
        h('button', { type: 'button', class: 'conversation', title, text: title, 'aria-current': current ? 'true' : null,
          click: () => selectConv(c.id) }),
        h('button', { type: 'button', class: 'delete', title: 'Delete', 'aria-label': `Delete conversation: ${title}`,
          click: () => deleteConv(c.id) }, icon('trash'))));
    }
    el.convs.replaceChildren(ul);
  }

  // ---- markdown (a small safe subset, built as DOM nodes) ------------------------
  const INLINE = new RegExp([
    /\\([\\`*_[\]()#+\-.!>~|])/.source, // 1: escaped character
    /(`+)([^`]|[^`][\s\S]*?[^`])\2(?!`)/.source, // 2, 3: inline code
    /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 4: bold
    /(?<![\w])__(?=\S)([\s\S]*?\S)__(?![\w])/.source, // 5: bold
    /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 6: italic
    /(?<![\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])/.source, // 7: italic
    /!?\[([^\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)/.source, // 8, 9: link or image
  ].join('|'), 'g');

  const addText = (parent, s) => s.split('\n').forEach((part, k) => {
    if (k) parent.append(h('br'));
    if (part) parent.append(part);
  });

  function inline(parent, text) {
    let last = 0;
    for (const m of text.matchAll(INLINE)) {
      addText(parent, text.slice(last, m.index));
      if (m[1] != null) parent.append(m[1]);
      else if (m[2] != null) parent.append(h('code', { text: m[3].replace(/^ (.+) $/, '$1') }));
      else if (m[4] != null || m[5] != null) parent.append(inline(h('strong'), m[4] ?? m[5]));
      else if (m[6] != null || m[7] != null) parent.append(inline(h('em'), m[6] ?? m[7]));
      else {
        const label = m[8].trim(), url = m[9];
        addText(parent, !url ? label : label && label !== url ? `${label} (${url})` : url);
      }
      last = m.index + m[0].length;
    }
    addText(parent, text.slice(last));
    return parent;
  }

  async function copyText(text, btn) {
    let ok = false;
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(text); ok = true; } catch { /* fall back below */ }
    }
    if (!ok) {
      const ta = h('textarea', { class: 'clip', readonly: true, 'aria-hidden': 'true', tabindex: '-1' });
      ta.value = text;
      document.body.append(ta);
      ta.select();
      try { ok = document.execCommand('copy'); } catch { ok = false; }
      ta.remove();
      btn.focus();
    }
    btn.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
  }

  function codeBlock(code, lang) {
    const btn = h('button', { type: 'button', class: 'copy', 'aria-label': 'Copy code', text: 'Copy' });
    btn.addEventListener('click', () => copyText(code, btn));
    return h('div', { class: 'code-block' },
      h('div', { class: 'code-head' }, h('span', { text: lang || 'code' }), btn),
      h('pre', null, h('code', { text: code })));
  }

  function renderMarkdown(root, src) {
    const out = [];
    const lines = String(src).replace(/\r\n?/g, '\n').split('\n');
    let para = [], list = null;
    const flush = () => { if (para.length) out.push(inline(h('p'), para.join('\n'))); para = []; };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if ((m = /^\s*(`{3,}|~{3,})\s*([^\s`]*)/.exec(line))) {
        flush(); list = null;
        const code = [];
        while (i + 1 < lines.length && !lines[i + 1].trim().startsWith(m[1])) code.push(lines[++i]);
        i++; // the closing fence (or the end of a still-streaming reply)
        out.push(codeBlock(code.join('\n'), m[2]));
      } else if ((m = /^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/.exec(line))) {
        flush(); list = null;
        out.push(inline(h(`h${Math.min(m[1].length, 3)}`), m[2]));
      } else if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
        flush(); list = null;
        out.push(h('hr'));
      } else if ((m = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/.exec(line))) {
        flush();
        const tag = /\d/.test(m[1]) ? 'ol' : 'ul';
        if (!list || list.tagName.toLowerCase() !== tag) {
          list = h(tag);
          if (tag === 'ol' && parseInt(m[1], 10) !== 1) list.start = parseInt(m[1], 10);
          out.push(list);
        }
        list.append(inline(h('li'), m[2]));
      } else if (!line.trim()) {
        flush(); list = null;
      } else if (list && /^\s+\S/.test(line)) {
        inline(list.lastElementChild, `\n${line.trim()}`); // a continuation line of the item
      } else {
        list = null;
        para.push(line);
      }
    }
    flush();
    root.replaceChildren(...out);
    return root;
  }

  // ---- rendering messages ---------------------------------------------------------
  const nearBottom = () => el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 80;

  function actionButton(cls, name, label, handler) {
    return h('button', { type: 'button', class: `btn-icon ${cls}`, 'aria-label': label, title: label, click: handler },
      icon(name));
  }

  // One node per message object, kept across renders so that the live region only
  // announces what is new instead of the whole conversation again.
  const nodes = new WeakMap();
  function messageNode(m, extra = '') {
    const role = m.role === 'user' || m.role === 'assistant' ? m.role : 'error';
    const content = h('div', { class: 'content' });
    if (role === 'assistant') renderMarkdown(content, m.content);
    else content.textContent = m.content;
    const node = h('div', { class: `msg ${role}${extra}` }, content);
    nodes.set(m, node);
    return node;
  }

  function setActions(node, m, opts) {
    const actions = [];
    if (opts.edit) actions.push(actionButton('edit', 'edit', 'Edit message', editLast));
    if (opts.regenerate) actions.push(actionButton('regenerate', 'regenerate', 'Regenerate reply', regenerate));
    if (opts.retry) actions.push(actionButton('retry', 'regenerate', 'Retry', regenerate));
    const meta = m.role === 'assistant' ? metaText(m) : '';
    const old = node.querySelector(':scope > .actions');
    const next = actions.length || meta ? h('div', { class: 'actions' }, ...actions, meta ? h('span', { class: 'meta', text: meta }) : null) : null;
    if (old && next && old.isEqualNode(next)) return;
    if (old) old.remove();
    if (next) node.append(next);
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

  function renderMessages() {
    const box = el.messages;
    const stick = nearBottom(), top = box.scrollTop, msgs = conv.messages, list = [];
    if (!msgs.length) {
      if (props.greeting) {
        list.push(h('div', { class: 'msg assistant greeting' }, renderMarkdown(h('div', { class: 'content' }), props.greeting)));
      } else {
        list.push(h('div', { class: 'empty' },
          h('p', { class: 'empty-title', text: props.model || 'llamabundle' }),
          h('p', { text: 'Type a message below to start a conversation.' })));
      }
    }
    const idle = !gen, lastUser = lastIndex(msgs, (m) => m.role === 'user');
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

  function updateStats() {
    const msgs = conv ? conv.messages : [];
    const withUsage = msgs[lastIndex(msgs, (m) => m.role === 'assistant' && m.usage?.total_tokens != null)];
    const used = withUsage ? withUsage.usage.total_tokens : 0, n = props.n_ctx;
    el.ctx.textContent = `${fmt(used)} / ${n ? fmt(n) : '\u2013'} tokens`;
    el.ctx.classList.toggle('warn', Boolean(n && used / n > 0.9));
    const last = msgs[lastIndex(msgs, (m) => m.role === 'assistant')];
    el.tps.textContent = last && last.tps ? `${last.tps.toFixed(1)} tok/s` : '\u2013 tok/s';
  }

  function updatePreview() {
    const s = el.system.value.replace(/\s+/g, ' ').trim();
    el.sysPreview.textContent = s ? `\u00b7 ${s}` : '\u00b7 none';
  }

  // ---- talking to the server ------------------------------------------------------
  async function errorMessage(res) {
    let text = '';
    try { text = await res.text(); } catch { /* no body */ }
    try {
      const j = JSON.parse(text);
      const msg = j?.error?.message ?? (typeof j?.error === 'string' ? j.error : j?.message);
      if (msg) return String(msg);
    } catch { /* not JSON */ }
    text = text.trim();
    return text && !text.startsWith('<') ? text.slice(0, 500) : `The server answered ${res.status} ${res.statusText}`.trim();
  }

  // Reads a Server-Sent Events body, calling onData with each parsed JSON payload.
  async function readEvents(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '', data = [];
    const dispatch = () => {
      if (!data.length) return false;
      const payload = data.join('\n');
      data = [];
      if (payload.trim() === '[DONE]') return true;
      let obj;
      try { obj = JSON.parse(payload); } catch { return false; }
      onData(obj);
      return false;
    };
    const line = (l) => {
      if (l === '') return dispatch();
      if (l.startsWith('data:')) data.push(l.slice(5).replace(/^ /, ''));
      return false; // comments (":") and other fields are ignored
    };
    for (;;) {
      const { value, done } = await reader.read();
      buf += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const l = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (line(l)) { reader.cancel().catch(() => {}); return; }
      }
      if (done) { if (buf) line(buf.replace(/\r$/, '')); dispatch(); return; }
    }
  }

  async function generate() {
    const c = conv;
    const messages = [], system = systemOf(c);
    if (system.trim()) messages.push({ role: 'system', content: system });
    for (const m of c.messages) if (m.role === 'user' || m.role === 'assistant') messages.push({ role: m.role, content: m.content });

    const controller = new AbortController();
    const reply = { role: 'assistant', content: '' };
    gen = { controller, conv: c };
    setBusy(true);
    renderMessages();
    const live = messageNode(reply, ' streaming'), content = live.querySelector('.content');
    el.messages.append(live);
    el.messages.scrollTop = el.messages.scrollHeight;

    let t0 = 0, pieces = 0, usage = null, timings = null, finish = null;
    let error = null, aborted = false, needKey = false, painting = false;
    const paint = () => {
      if (painting) return;
      painting = true;
      requestAnimationFrame(() => {
        painting = false;
        const stick = nearBottom();
        renderMarkdown(content, reply.content);
        if (stick) el.messages.scrollTop = el.messages.scrollHeight;
      });
    };

    try {
      const res = await fetch('/v1/chat/completions', {
        method: 'POST',
        headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
        body: JSON.stringify({ model: props.model || 'default', messages, stream: true, stream_options: { include_usage: true } }),
        signal: controller.signal,
      });
      if (res.status === 401) needKey = true;
      else if (!res.ok) error = await errorMessage(res);
      else {
        await readEvents(res.body, (d) => {
          if (d.error) { error = d.error.message || String(d.error); return; }
          const choice = d.choices?.[0];
          const piece = choice?.delta?.content;
          if (piece) {
            if (!t0) t0 = performance.now();
            pieces++;
            reply.content += piece;
            paint();
          }
          if (choice?.finish_reason) finish = choice.finish_reason;
          if (d.usage) usage = d.usage;
          if (d.timings) timings = d.timings;
        });
      }
    } catch (e) {
      if (e && e.name === 'AbortError') aborted = true;
      else error = `Could not reach the server: ${e && e.message ? e.message : e}`;
    }
    if (controller.signal.aborted) aborted = true;
    const seconds = t0 ? (performance.now() - t0) / 1000 : 0;

    gen = null;
    live.classList.remove('streaming');
    renderMarkdown(content, reply.content);
    if (reply.content || (!aborted && !error && !needKey)) {
      reply.finish = aborted ? 'stopped' : finish;
      if (usage) reply.usage = { completion_tokens: usage.completion_tokens, total_tokens: usage.total_tokens };
      const tokens = usage?.completion_tokens ?? pieces;
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
      askKey(apiKey ? 'The API key was not accepted. Enter a valid key:' : 'This server requires an API key.', () => {
        if (conv === c && !gen) generate();
      });
    } else if (document.activeElement === el.stop || document.activeElement === document.body) {
      el.prompt.focus();
    }
  }

  function setBusy(busy) {
    document.body.classList.toggle('busy', busy);
    el.send.disabled = busy;
    el.stop.disabled = !busy;
    el.messages.setAttribute('aria-busy', String(busy));
  }

  const stopGeneration = () => { if (gen) gen.controller.abort(); };

  async function loadProps() {
    let res;
    try {
      res = await fetch('/props', { headers: authHeaders({ Accept: 'application/json' }) });
    } catch { el.model.textContent = 'Server unreachable'; return; }
    if (res.status === 401) {
      askKey(apiKey ? 'The API key was not accepted. Enter a valid key:' : 'This server requires an API key.', loadProps);
      return;
    }
    if (!res.ok) {
      el.model.textContent = 'Server error';
      el.model.title = await errorMessage(res);
      return;
    }
    try { props = { ...props, ...(await res.json()) }; } catch { /* keep the defaults */ }
    propsLoaded = true;
    el.model.textContent = props.model || 'Local model';
    el.model.title = props.model || '';
    document.title = `${props.model || 'Chat'} \u00b7 llamabundle`;
    el.note.hidden = props.chat_template !== false;
    if (conv.system == null && document.activeElement !== el.system) { el.system.value = systemOf(conv); updatePreview(); }
    updateStats();
    if (!conv.messages.length && !gen) renderMessages();
    if (props.ready === false) setTimeout(loadProps, 1500); // model still loading: refresh
    if (props.api_key_required && !apiKey) askKey('This server requires an API key.', null);
  }

  // ---- API key form ---------------------------------------------------------------
  function askKey(message, retry) {
    if (retry || !keyRetry) keyRetry = retry;
    el.keyMsg.textContent = message;
    if (apiKey) { apiKey = ''; store.del('apiKey'); }
    el.keyForm.hidden = false;
    el.keyInput.value = '';
    el.keyInput.focus();
  }

  function closeKeyForm() {
    el.keyForm.hidden = true;
    keyRetry = null;
    el.prompt.focus();
  }

  // ---- user actions ---------------------------------------------------------------
  function send() {
    if (gen) return;
    const text = el.prompt.value.replace(/\s+$/, '');
    if (!text.trim()) { el.prompt.focus(); return; }
    el.prompt.value = '';
    fitPrompt();
    conv.system = el.system.value;
    conv.messages.push({ role: 'user', content: text });
    saveConv(conv);
    store.set('current', conv.id);
    renderSidebar();
    el.messages.scrollTop = el.messages.scrollHeight;
    generate();
  }

  function editLast() {
    if (gen) return;
    const i = lastIndex(conv.messages, (m) => m.role === 'user');
    if (i < 0) return;
    const text = conv.messages[i].content;
    conv.messages.splice(i);
    saveConv(conv);
    renderMessages();
    updateStats();
    renderSidebar();
    el.prompt.value = text;
    fitPrompt();
    el.prompt.focus();
    el.prompt.setSelectionRange(text.length, text.length);
  }

  function regenerate() {
    if (gen) return;
    const i = lastIndex(conv.messages, (m) => m.role === 'user');
    if (i < 0) return;
    conv.messages.splice(i + 1);
    generate();
  }

  function fitPrompt() {
    if (CSS.supports && CSS.supports('field-sizing', 'content')) return;
    el.prompt.rows = Math.min(8, Math.max(1, el.prompt.value.split('\n').length));
  }

  function sidebarOpen() {
    return isPhone.matches ? document.body.classList.contains('drawer-open') : !document.body.classList.contains('sidebar-collapsed');
  }

  function setSidebar(open) {
    if (isPhone.matches) {
      document.body.classList.toggle('drawer-open', open);
      el.main.inert = open;
    } else {
      document.body.classList.toggle('sidebar-collapsed', !open);
      el.main.inert = false;
    }
    el.toggle.setAttribute('aria-expanded', String(open));
  }

  // ---- wiring ---------------------------------------------------------------------
  function init() {
    el.composer.addEventListener('submit', (e) => { e.preventDefault(); send(); });
    el.prompt.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.ctrlKey && !e.altKey && !e.metaKey) {
        e.preventDefault();
        send();
      }
    });
    el.prompt.addEventListener('input', fitPrompt);
    el.stop.addEventListener('click', stopGeneration);
    el.newChat.addEventListener('click', startNewChat);
    el.toggle.addEventListener('click', () => {
      const open = !sidebarOpen();
      setSidebar(open);
      if (open && isPhone.matches) el.newChat.focus();
    });
    el.scrim.addEventListener('click', () => setSidebar(false));
    isPhone.addEventListener('change', () => {
      document.body.classList.remove('drawer-open', 'sidebar-collapsed');
      setSidebar(!isPhone.matches);
    });
    el.system.addEventListener('input', () => {
      conv.system = el.system.value;
      updatePreview();
      saveConv(conv, false);
    });
    el.keyForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = el.keyInput.value.trim();
      if (!v) { el.keyInput.focus(); return; }
      apiKey = v;
      store.set('apiKey', v);
      const retry = keyRetry;
      closeKeyForm();
      if (retry) retry();
      if (!propsLoaded && retry !== loadProps) loadProps();
    });
    el.keyCancel.addEventListener('click', closeKeyForm);
    document.addEventListener('keydown', (e) => {
      if (e.key !== 'Escape') return;
      if (gen) { e.preventDefault(); stopGeneration(); el.prompt.focus(); }
      else if (isPhone.matches && sidebarOpen()) { setSidebar(false); el.toggle.focus(); }
      else if (!el.keyForm.hidden && el.keyForm.contains(document.activeElement)) closeKeyForm();
    });
    window.addEventListener('storage', (e) => {
      if (e.key && e.key.startsWith(PREFIX) && !gen) renderSidebar();
    });

    const saved = store.get('current');
    showConv((saved && parseConv(store.get(`conv.${saved}`))) || newConv());
    setBusy(false);
    setSidebar(!isPhone.matches);
    fitPrompt();
    el.prompt.focus();
    loadProps();
  }

  init();
})();
