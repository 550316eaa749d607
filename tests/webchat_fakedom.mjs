// A minimal stand-in for the browser DOM, enough for the web chat's Markdown renderer
// (templates/markdown-dom.js) to run under Node: elements, text nodes, append/remove,
// textContent, attributes and listeners. serialize() gives a comparable plain form.

export class FakeText {
  constructor(data) {
    this.data = data;
    this.parentNode = null;
  }

  get textContent() {
    return this.data;
  }

  remove() {
    detach(this);
  }
}

function detach(node) {
  const parent = node.parentNode;
  if (!parent) return;
  parent.childNodes.splice(parent.childNodes.indexOf(node), 1);
  node.parentNode = null;
}

export class FakeElement {
  constructor(tag, doc) {
    this.tagName = tag.toUpperCase();
    this.childNodes = [];
    this.attributes = {};
    this.listeners = {};
    this.className = '';
    this.parentNode = null;
    this.ownerDocument = doc;
  }

  get children() {
    return this.childNodes.filter((n) => n instanceof FakeElement);
  }

  get lastElementChild() {
    return this.children.at(-1) ?? null;
  }

  append(...nodes) {
    for (let n of nodes) {
      if (typeof n === 'string') n = new FakeText(n);
      if (!(n instanceof FakeText || n instanceof FakeElement)) throw new TypeError(`cannot append ${n}`);
      detach(n);
      n.parentNode = this;
      this.childNodes.push(n);
    }
  }

  prepend(...nodes) {
    const rest = [...this.childNodes];
    for (const n of rest) detach(n);
    this.append(...nodes, ...rest);
  }

  remove() {
    detach(this);
  }

  replaceChildren(...nodes) {
    for (const n of [...this.childNodes]) detach(n);
    this.append(...nodes);
  }

  get textContent() {
    return this.childNodes.map((n) => n.textContent).join('');
  }

  set textContent(v) {
    this.replaceChildren(...(String(v) ? [String(v)] : []));
  }

  setAttribute(k, v) {
    this.attributes[k] = String(v);
  }

  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }
}

// A fake `document` that counts the elements it creates (by tag, and in all).
export function fakeDocument() {
  const doc = {
    created: 0,
    tags: new Set(),
    createElement(tag) {
      doc.created++;
      doc.tags.add(tag.toLowerCase());
      return new FakeElement(tag, doc);
    },
  };
  return doc;
}

// A plain, comparable form of a node: [tag, {class, attributes, start}, ...children];
// adjacent text nodes are joined (as the browser shows them).
export function serialize(node) {
  if (node instanceof FakeText) return node.data;
  const props = {};
  if (node.className) props.class = node.className;
  if (Object.keys(node.attributes).length) props.attrs = { ...node.attributes };
  if (node.start != null) props.start = node.start;
  const kids = [];
  for (const child of node.childNodes) {
    const s = serialize(child);
    if (typeof s === 'string' && typeof kids[kids.length - 1] === 'string') kids[kids.length - 1] += s;
    else if (s !== '') kids.push(s);
  }
  return [node.tagName.toLowerCase(), props, ...kids];
}
