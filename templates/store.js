// Saved conversations and settings, in this browser's localStorage only. A conversation
// is { id, title, system, messages: [{ role, content, ... }], updated }; an assistant
// message may keep its model's thinking as `reasoning` (shown, never sent back).
export const PREFIX = 'llamabundle.';

export const store = {
  get(k) { try { return localStorage.getItem(PREFIX + k); } catch { return null; } },
  set(k, v) { // false when the storage is full or disabled
    try { localStorage.setItem(PREFIX + k, v); return true; } catch { return false; }
  },
  del(k) { try { localStorage.removeItem(PREFIX + k); } catch { /* disabled */ } },
};

// This tab only, gone when it closes: where an API key lives unless the user asks the
// page to remember it (a key in localStorage outlives the session and any shared use).
export const session = {
  get(k) { try { return sessionStorage.getItem(PREFIX + k); } catch { return null; } },
  set(k, v) { try { sessionStorage.setItem(PREFIX + k, v); } catch { /* disabled */ } },
  del(k) { try { sessionStorage.removeItem(PREFIX + k); } catch { /* disabled */ } },
};

export function newConv() {
  const id = Date.now().toString(36) + Math.random().toString(36).slice(2, 7);
  return { id, title: '', system: null, messages: [], updated: Date.now() };
}

export function titleOf(c) {
  const first = c.messages.find((m) => m.role === 'user');
  const t = first ? first.content.replace(/\s+/g, ' ').trim() : '';
  return t.length > 48 ? `${t.slice(0, 47).trimEnd()}\u2026` : t || 'New chat';
}

export function saveConv(c, touch = true) {
  if (c.deleted) return;
  if (!c.messages.length) { store.del(`conv.${c.id}`); return; }
  if (touch) c.updated = Date.now();
  c.title = titleOf(c);
  // Long reasoning may not fit in the storage left: the chat is then saved without it.
  if (!store.set(`conv.${c.id}`, JSON.stringify(c))) {
    store.set(`conv.${c.id}`, JSON.stringify(c, (k, v) => (k === 'reasoning' ? undefined : v)));
  }
}

export function parseConv(text) {
  let c = null;
  try { c = JSON.parse(text); } catch { /* damaged entry */ }
  return c && typeof c.id === 'string' && Array.isArray(c.messages) ? c : null;
}

export const loadConv = (id) => parseConv(store.get(`conv.${id}`));

// Every saved conversation, the most recently used first.
export function listConvs() {
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
