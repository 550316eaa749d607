// The server's /props (model name, context size, default system prompt, greeting...),
// loaded when the page opens and awaited by a message sent before they have arrived.
import { errorMessage, fetchProps } from './api.js';
import { askKey, refusedMessage } from './keyform.js';
import { state, systemOf } from './state.js';
import { el, renderMessages, updatePreview, updateStats } from './view.js';

let loading = null; // the attempt in flight

// Asks the server for /props (once at a time); resolves when that attempt is over,
// whether the props came or not (state.propsLoaded says which).
export function loadProps() {
  if (!loading) loading = attempt().finally(() => { loading = null; });
  return loading;
}

// Resolves once the props are loaded or one more attempt to load them has failed.
export async function ensureProps() {
  if (!state.propsLoaded) await loadProps();
}

async function attempt() {
  let res;
  try {
    res = await fetchProps();
  } catch {
    el.model.textContent = 'Server unreachable';
    return;
  }
  if (res.status === 401) {
    askKey(refusedMessage(), loadProps);
    return;
  }
  if (!res.ok) {
    el.model.textContent = 'Server error';
    el.model.title = await errorMessage(res);
    return;
  }
  try { state.props = { ...state.props, ...(await res.json()) }; } catch { /* keep the defaults */ }
  state.propsLoaded = true;
  show();
}

function show() {
  const { props, conv } = state;
  el.model.textContent = props.model || 'Local model';
  el.model.title = props.model || '';
  document.title = `${props.model || 'Chat'} \u00b7 llamabundle`;
  el.note.hidden = !props.plain_chat;
  if (conv.system == null && document.activeElement !== el.system) {
    el.system.value = systemOf(conv);
    updatePreview();
  }
  updateStats();
  if (!conv.messages.length && !state.gen) renderMessages();
  if (props.ready === false) setTimeout(loadProps, 1500); // model still loading: refresh
  if (props.api_key_required && !state.apiKey) askKey('This server requires an API key.', null);
}
