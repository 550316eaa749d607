// Talking to the server: /props and streamed /v1/chat/completions (Server-Sent Events).
import { authHeaders } from './state.js';

// A readable message for a failed response: the server's JSON error, or its status.
export async function errorMessage(res) {
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
export async function readEvents(body, onData) {
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

export const fetchProps = () => fetch('/props', { headers: authHeaders({ Accept: 'application/json' }) });

// Starts a streamed chat completion. `model` is left out when it is not known yet: the
// server then uses its own, where a made-up name would be refused (404).
export function postChat({ model, messages, signal }) {
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  if (model) body.model = model;
  return fetch('/v1/chat/completions', {
    method: 'POST',
    headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
    body: JSON.stringify(body),
    signal,
  });
}
