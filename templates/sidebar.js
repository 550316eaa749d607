// The conversation list: a sidebar on wide screens, a drawer on phones.
import { h, icon } from './dom.js';
import { listConvs, titleOf } from './store.js';
import { state } from './state.js';
import { el } from './view.js';

export const isPhone = window.matchMedia('(max-width: 760px)');

// What the list's buttons do (set by chat.js).
export const sidebarActions = { select: () => {}, remove: () => {} };

export function renderSidebar() {
  const list = listConvs();
  if (!list.length) {
    el.convs.replaceChildren(h('p', { class: 'conv-empty', text: 'No saved chats yet.' }));
    return;
  }
  const ul = h('ul', { class: 'conv-list' });
  for (const c of list) {
    const current = c.id === state.conv.id;
    const title = c.title || titleOf(c);
    ul.append(h('li', { class: `conv-item${current ? ' active' : ''}` },
      h('button', { type: 'button', class: 'conversation', title, text: title, 'aria-current': current ? 'true' : null,
        click: () => sidebarActions.select(c.id) }),
      h('button', { type: 'button', class: 'delete', title: 'Delete', 'aria-label': `Delete conversation: ${title}`,
        click: () => sidebarActions.remove(c.id) }, icon('trash'))));
  }
  el.convs.replaceChildren(ul);
}

export function sidebarOpen() {
  return isPhone.matches
    ? document.body.classList.contains('drawer-open')
    : !document.body.classList.contains('sidebar-collapsed');
}

export function setSidebar(open) {
  if (isPhone.matches) {
    document.body.classList.toggle('drawer-open', open);
    el.main.inert = open;
  } else {
    document.body.classList.toggle('sidebar-collapsed', !open);
    el.main.inert = false;
  }
  el.toggle.setAttribute('aria-expanded', String(open));
}

// Wires the toggle button, the scrim and the switch between the two layouts.
export function initSidebar() {
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
  setSidebar(!isPhone.matches);
}
