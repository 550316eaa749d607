// What the page knows while it runs, in one place: the server's /props, the API key,
// the conversation on screen and the reply being generated.
import { session, store } from './store.js';

export const state = {
  props: { model: '', n_ctx: 0, system_prompt: '', plain_chat: false, greeting: '', api_key_required: false, device: '', device_why: '' },
  propsLoaded: false,
  apiKey: session.get('apiKey') || store.get('apiKey') || '',
  conv: null, // the conversation on screen
  gen: null, // { controller, conv } while a reply is being generated
};

export const systemOf = (c) => c.system ?? state.props.system_prompt ?? '';

// The key for this tab (sessionStorage), or remembered on this device (localStorage).
export function setApiKey(key, remember = false) {
  state.apiKey = key;
  session.del('apiKey');
  store.del('apiKey');
  if (key) (remember ? store : session).set('apiKey', key);
}

export const authHeaders = (extra) =>
  state.apiKey ? { ...extra, Authorization: `Bearer ${state.apiKey}` } : { ...extra };
