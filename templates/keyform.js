// The API key form, shown when the server answers 401 or says it needs a key.
import { setApiKey, state } from './state.js';
import { el } from './view.js';

let keyRetry = null; // what to try again once a key is saved

// The form's message after a 401: the key was missing, or it was wrong.
export const refusedMessage = () =>
  state.apiKey ? 'The API key was not accepted. Enter a valid key:' : 'This server requires an API key.';

export function askKey(message, retry) {
  if (retry || !keyRetry) keyRetry = retry;
  el.keyMsg.textContent = message;
  if (state.apiKey) setApiKey('');
  el.keyForm.hidden = false;
  el.keyInput.value = '';
  el.keyRemember.checked = false;
  el.keyInput.focus();
}

export function closeKeyForm() {
  el.keyForm.hidden = true;
  keyRetry = null;
  el.prompt.focus();
}

// afterSave(retry) runs once a key is saved and `retry` (the request that needed it) restarted.
export function initKeyForm(afterSave) {
  el.keyForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = el.keyInput.value.trim();
    if (!v) { el.keyInput.focus(); return; }
    setApiKey(v, el.keyRemember.checked);
    const retry = keyRetry;
    closeKeyForm();
    if (retry) retry();
    afterSave(retry);
  });
  el.keyCancel.addEventListener('click', closeKeyForm);
}
