// What the page knows while it runs, in one place: the server's /props, the API key,
// the conversation on screen and the reply being generated.
import { store } from './store.js';

export const state = {
  props: { model: '', n_ctx: 0, system_prompt: '', plain_chat: false, greeting: '', api_key_required: false, device: '', device_why: '' },
  propsLoaded: false,
  apiKey: store.get('apiKey') || '',
  conv: null, // the conversation on screen
  gen: null, // { controller, conv } while a reply is being generated
};

export const systemOf = (c) => c.system ?? state.props.system_prompt ?? '';

export function setApiKey(key) {
  state.apiKey = key;
  if (key) store.set('apiKey', key);
  else store.del('apiKey');
}

export const authHeaders = (extra) =>
  state.apiKey ? { ...extra, Authorization: `Bearer ${state.apiKey}` } : { ...extra };
