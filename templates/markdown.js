// A small, safe Markdown subset, parsed into a plain tree (no DOM here; markdown-dom.js
// turns the tree into elements). Nothing in a reply becomes HTML or a link: a link is
// shown as its text and address.
//
// Blocks:  { type: 'p', children }      { type: 'heading', level: 1-3, children }
//          { type: 'hr' }               { type: 'code', lang, text }
//          { type: 'list', ordered, start: number|null, items: [children, ...] }
// Inline children: strings, and { type: 'br' }, { type: 'code', text },
//          { type: 'strong', children }, { type: 'em', children }.
//
// The parser reads whole lines, left to right, and a block is final once a later line
// has closed it. MarkdownStream uses that while a reply streams in: finished blocks are
// parsed once and kept (the same objects), and only the block still open at the end of
// the text is parsed again each time it is shown.

const INLINE = new RegExp([
  /\\([\\`*_[\]()#+\-.!>~|])/.source, // 1: escaped character
  /(`+)([^`]|[^`][\s\S]*?[^`])\2(?!`)/.source, // 2, 3: inline code
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 4: bold
  /(?<![\w])__(?=\S)([\s\S]*?\S)__(?![\w])/.source, // 5: bold
  /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 6: italic
  /(?<![\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])/.source, // 7: italic
  /!?\[([^\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)/.source, // 8, 9: link or image
].join('|'), 'g');

const FENCE = /^\s*(`{3,}|~{3,})\s*([^\s`]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const HR = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;

// Appends a string to inline children, merging it with a string already at the end.
function pushText(out, s) {
  if (!s) return;
  if (typeof out[out.length - 1] === 'string') out[out.length - 1] += s;
  else out.push(s);
}

function addText(out, s) {
  s.split('\n').forEach((part, k) => {
    if (k) out.push({ type: 'br' });
    pushText(out, part);
  });
}

// The inline children of `text` (emphasis, code spans, escapes, links as plain text).
export function inline(text, out = []) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    addText(out, text.slice(last, m.index));
    if (m[1] != null) pushText(out, m[1]);
    else if (m[2] != null) out.push({ type: 'code', text: m[3].replace(/^ (.+) $/, '$1') });
    else if (m[4] != null || m[5] != null) out.push({ type: 'strong', children: inline(m[4] ?? m[5]) });
    else if (m[6] != null || m[7] != null) out.push({ type: 'em', children: inline(m[6] ?? m[7]) });
    else {
      const label = m[8].trim(), url = m[9];
      addText(out, !url ? label : label && label !== url ? `${label} (${url})` : url);
    }
    last = m.index + m[0].length;
  }
  addText(out, text.slice(last));
  return out;
}

// Turns the lines of an open block into its finished tree node.
function finish(open) {
  if (open.type === 'p') return { type: 'p', children: inline(open.lines.join('\n')) };
  if (open.type === 'code') return { type: 'code', lang: open.lang, text: open.lines.join('\n') };
  const items = open.items.map(([first, ...more]) => {
    const out = inline(first);
    for (const line of more) inline(`\n${line}`, out); // continuation lines of the item
    return out;
  });
  return { type: 'list', ordered: open.ordered, start: open.start, items };
}

// Reads Markdown one line at a time. `done` holds the finished blocks, in order; `open`
// is the raw lines of the block that a next line may still extend (a paragraph, a list,
// or a code fence not closed yet), or null.
export class BlockParser {
  constructor() {
    this.done = [];
    this.open = null;
  }

  // A copy that shares no state with this parser and starts with no finished blocks.
  fork() {
    const p = new BlockParser();
    p.open = this.open && structuredClone(this.open);
    return p;
  }

  close() {
    if (this.open) this.done.push(finish(this.open));
    this.open = null;
  }

  line(line) {
    const open = this.open;
    let m;
    if (open?.type === 'code') {
      if (line.trim().startsWith(open.fence)) this.close();
      else open.lines.push(line);
    } else if ((m = FENCE.exec(line))) {
      this.close();
      this.open = { type: 'code', fence: m[1], lang: m[2], lines: [] };
    } else if ((m = HEADING.exec(line))) {
      this.close();
      this.done.push({ type: 'heading', level: Math.min(m[1].length, 3), children: inline(m[2]) });
    } else if (HR.test(line)) {
      this.close();
      this.done.push({ type: 'hr' });
    } else if ((m = ITEM.exec(line))) {
      const ordered = /\d/.test(m[1]), n = parseInt(m[1], 10);
      if (open?.type !== 'list' || open.ordered !== ordered) {
        this.close();
        this.open = { type: 'list', ordered, start: ordered && n !== 1 ? n : null, items: [] };
      }
      this.open.items.push([m[2]]);
    } else if (!line.trim()) {
      this.close();
    } else if (open?.type === 'list' && /^\s+\S/.test(line)) {
      open.items[open.items.length - 1].push(line.trim());
    } else {
      if (open?.type !== 'p') {
        this.close();
        this.open = { type: 'p', lines: [] };
      }
      this.open.lines.push(line);
    }
  }
}

// Markdown text that arrives in pieces. append() parses each line once it is complete;
// `done` only ever grows (its blocks are final), and pending() gives the blocks after
// them as rendering the whole text so far at once would.
export class MarkdownStream {
  constructor() {
    this.parser = new BlockParser();
    this.partial = ''; // the text after the last complete line
    this.cr = false; // the text ended in "\r", which may be half of a "\r\n"
  }

  get done() {
    return this.parser.done;
  }

  append(chunk) {
    let s = (this.cr ? '\r' : '') + String(chunk);
    this.cr = s.endsWith('\r');
    if (this.cr) s = s.slice(0, -1);
    s = s.replace(/\r\n?/g, '\n');
    const nl = s.lastIndexOf('\n');
    if (nl < 0) {
      this.partial += s;
      return;
    }
    const lines = (this.partial + s.slice(0, nl)).split('\n');
    this.partial = s.slice(nl + 1);
    for (const line of lines) this.parser.line(line);
  }

  // The blocks not finished yet (usually one; none for empty text), parsed afresh.
  pending() {
    const p = this.parser.fork();
    for (const line of (this.partial + (this.cr ? '\n' : '')).split('\n')) p.line(line);
    p.close();
    return p.done;
  }

  blocks() {
    return [...this.done, ...this.pending()];
  }
}

// The blocks of a whole text.
export function parseMarkdown(text) {
  const s = new MarkdownStream();
  s.append(text == null ? '' : text);
  return s.blocks();
}
