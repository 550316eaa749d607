// DOM helpers. Everything on the page is built with createElement and textContent (never
// HTML strings), so it runs under the strict Content-Security-Policy the server sends.

// h('p', { class: 'x', text: 'hi', click: fn }, child, ...): one element.
export function h(tag, attrs, ...kids) {
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

// An <svg class="icon"> with one path. It starts as an empty copy of the page's own send
// icon, which saves naming the SVG namespace (a URL) in this file.
export function icon(name) {
  const svg = document.querySelector('#send svg').cloneNode(false);
  const path = document.createElementNS(svg.namespaceURI, 'path');
  path.setAttribute('d', ICONS[name]);
  svg.append(path);
  return svg;
}

// Copies text to the clipboard and says on `btn` whether that worked.
export async function copyText(text, btn) {
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

export const fmt = (n) => Number(n).toLocaleString('en-US');

export function lastIndex(arr, pred) {
  for (let i = arr.length - 1; i >= 0; i--) if (pred(arr[i])) return i;
  return -1;
}
