// Markdown as DOM: the tree from markdown.js turned into elements with textContent only.
// LiveMarkdown shows a reply while it streams: each finished block becomes elements once
// and stays; only the block still open at the end is rebuilt when more text arrives.
import { copyText, h } from './dom.js';
import { MarkdownStream, parseMarkdown } from './markdown.js';

const INLINE_TAGS = { strong: 'strong', em: 'em' };

function inlineNodes(parent, children) {
  for (const n of children) {
    if (typeof n === 'string') parent.append(n);
    else if (n.type === 'br') parent.append(h('br'));
    else if (n.type === 'code') parent.append(h('code', { text: n.text }));
    else if (INLINE_TAGS[n.type]) parent.append(inlineNodes(h(INLINE_TAGS[n.type]), n.children));
  }
  return parent;
}

function codeBlock(code, lang) {
  const btn = h('button', { type: 'button', class: 'copy', 'aria-label': 'Copy code', text: 'Copy' });
  btn.addEventListener('click', () => copyText(code, btn));
  return h('div', { class: 'code-block' },
    h('div', { class: 'code-head' }, h('span', { text: lang || 'code' }), btn),
    h('pre', null, h('code', { text: code })));
}

// The element for one block of the tree.
export function blockNode(b) {
  switch (b.type) {
    case 'p': return inlineNodes(h('p'), b.children);
    case 'heading': return inlineNodes(h(`h${b.level}`), b.children);
    case 'hr': return h('hr');
    case 'code': return codeBlock(b.text, b.lang);
    case 'list': {
      const list = h(b.ordered ? 'ol' : 'ul');
      if (b.start != null) list.start = b.start;
      for (const item of b.items) list.append(inlineNodes(h('li'), item));
      return list;
    }
    default: throw new Error(`unknown block ${b.type}`);
  }
}

// Replaces root's children with the rendering of a whole text.
export function renderMarkdown(root, text) {
  root.replaceChildren(...parseMarkdown(text).map(blockNode));
  return root;
}

// A reply being streamed into `root` (which it owns): append() takes text as it
// arrives (no DOM work), render() brings root up to date.
export class LiveMarkdown {
  constructor(root) {
    this.root = root;
    this.stream = new MarkdownStream();
    this.shown = 0; // how many finished blocks are in root already
    this.tail = []; // the elements of the blocks after those
    this.dirty = false;
    root.replaceChildren();
  }

  append(text) {
    this.stream.append(text);
    this.dirty = true;
  }

  render() {
    if (!this.dirty) return;
    this.dirty = false;
    for (const node of this.tail) node.remove();
    const done = this.stream.done;
    while (this.shown < done.length) this.root.append(blockNode(done[this.shown++]));
    this.tail = this.stream.pending().map(blockNode);
    this.root.append(...this.tail);
  }
}
