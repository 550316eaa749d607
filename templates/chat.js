// llamabundle web chat: the entry module. Plain ES2020 modules, no dependencies; each
// file beside this one does one job (see their headers). This one holds what the user
// does (send, edit, regenerate, switch chats) and wires the page's events.
import { lastIndex } from './dom.js';
import { generate, stopGeneration } from './generate.js';
import { closeKeyForm, initKeyForm } from './keyform.js';
import { loadProps } from './props.js';
import { initSidebar, isPhone, renderSidebar, setSidebar, sidebarActions, sidebarOpen } from './sidebar.js';
import { state, systemOf } from './state.js';
import { PREFIX, listConvs, loadConv, newConv, saveConv, store } from './store.js';
import { actions, el, renderMessages, scrollToEnd, setBusy, updatePreview, updateStats } from './view.js';

function showConv(c) {
  state.conv = c;
  store.set('current', c.id);
  el.system.value = systemOf(c);
  updatePreview();
  renderMessages();
  updateStats();
  renderSidebar();
  scrollToEnd();
}

function selectConv(id) {
  if (state.gen) stopGeneration();
  const c = loadConv(id);
  if (!c) { renderSidebar(); return; }
  showConv(c);
  if (isPhone.matches) setSidebar(false);
  el.prompt.focus();
}

function startNewChat() {
  if (state.gen) stopGeneration();
  if (state.conv.messages.length) showConv(newConv());
  if (isPhone.matches) setSidebar(false);
  el.prompt.focus();
}

function deleteConv(id) {
  const list = listConvs();
  const at = list.findIndex((c) => c.id === id);
  if (state.gen && state.gen.conv.id === id) { state.gen.conv.deleted = true; stopGeneration(); }
  store.del(`conv.${id}`);
  if (state.conv.id === id) {
    const next = list.find((c) => c.id !== id);
    showConv((next && loadConv(next.id)) || newConv());
  } else renderSidebar();
  const buttons = el.convs.querySelectorAll('button.conversation');
  (buttons[Math.min(at, buttons.length - 1)] || el.newChat).focus();
}

function send() {
  if (state.gen) return;
  const text = el.prompt.value.replace(/\s+$/, '');
  if (!text.trim()) { el.prompt.focus(); return; }
  const { conv } = state;
  el.prompt.value = '';
  fitPrompt();
  // Before /props the box does not show the server's default system prompt yet:
  // generate() fills it in once they are loaded, unless the user has typed one.
  if (state.propsLoaded || conv.system != null) conv.system = el.system.value;
  conv.messages.push({ role: 'user', content: text });
  saveConv(conv);
  store.set('current', conv.id);
  renderSidebar();
  scrollToEnd();
  generate();
}

function editLast() {
  if (state.gen) return;
  const { conv } = state;
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
  if (state.gen) return;
  const i = lastIndex(state.conv.messages, (m) => m.role === 'user');
  if (i < 0) return;
  state.conv.messages.splice(i + 1);
  generate();
}

function fitPrompt() {
  if (CSS.supports && CSS.supports('field-sizing', 'content')) return;
  el.prompt.rows = Math.min(8, Math.max(1, el.prompt.value.split('\n').length));
}

function onKeydown(e) {
  if (e.key !== 'Escape') return;
  if (state.gen) { e.preventDefault(); stopGeneration(); el.prompt.focus(); }
  else if (isPhone.matches && sidebarOpen()) { setSidebar(false); el.toggle.focus(); }
  else if (!el.keyForm.hidden && el.keyForm.contains(document.activeElement)) closeKeyForm();
}

function init() {
  Object.assign(actions, { edit: editLast, regenerate });
  Object.assign(sidebarActions, { select: selectConv, remove: deleteConv });
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
  el.system.addEventListener('input', () => {
    state.conv.system = el.system.value;
    updatePreview();
    saveConv(state.conv, false);
  });
  initKeyForm((retry) => { if (!state.propsLoaded && retry !== loadProps) loadProps(); });
  document.addEventListener('keydown', onKeydown);
  window.addEventListener('storage', (e) => {
    if (e.key && e.key.startsWith(PREFIX) && !state.gen) renderSidebar();
  });

  const saved = store.get('current');
  showConv((saved && loadConv(saved)) || newConv());
  setBusy(false);
  initSidebar();
  fitPrompt();
  el.prompt.focus();
  loadProps();
}

init();
