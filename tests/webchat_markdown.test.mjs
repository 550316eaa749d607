// The web chat's Markdown renderer (templates/markdown.js, templates/markdown-dom.js),
// under Node with a fake DOM: what it renders, that rendering a reply as it streams in
// gives what rendering it at once gives, and that streaming only redoes the open block.
// Run: node --test tests/webchat_markdown.test.mjs
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { FakeElement, fakeDocument, serialize } from './webchat_fakedom.mjs';

// The page's modules are plain .js files served as they are; Node treats .js as CommonJS
// unless a package.json says otherwise, so they are imported from a copy that has one.
const TEMPLATES = fileURLToPath(new URL('../templates/', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'webchat-md-'));
for (const name of readdirSync(TEMPLATES)) if (name.endsWith('.js')) copyFileSync(join(TEMPLATES, name), join(dir, name));
writeFileSync(join(dir, 'package.json'), '{"type": "module"}\n');
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const { BlockParser, MarkdownStream, parseMarkdown } = await import(pathToFileURL(join(dir, 'markdown.js')));
const { LiveMarkdown, renderMarkdown } = await import(pathToFileURL(join(dir, 'markdown-dom.js')));

const doc = fakeDocument();
globalThis.document = doc;
const root = () => new FakeElement('div', doc);

const SAMPLES = [
  '# Title\n\nSome **bold** and *em* and `code` text.\nA second line with a [link](https://example.com/a?b=c)'
    + ' and ![an image](pic.png).\n\n- one\n- two\n  continued\n- three\n\n1. first\n2. second\n\n3) third\n\n'
    + "```python\nprint('hi')\n\n# not a heading\n```\n\n---\n\nAfter the rule: __strong__ _em_ \\*not em\\*.\n",
  'Intro line\n```js\nconst a = 1;\n\nconst b = `x`;', // a fence still open at the end
  'line one\r\nline two\r\n\r\n- a\r\n- b\r\n\r\n```\r\ncode\r\n```\r\n', // CRLF
  '- a\n* b\n1. c\n2. d\n- e\ntext after\n  indented para line\n\n  - nested item\n10. ten\n',
  '~~~~\ncode ```\n~~~\nstill code\n~~~~\nafter the fence',
  '#nope\n# yes #\n#### four\n  ### three\nPara\n***\n_ _ _\n- - -\n',
  'This **bold\nspans** lines and `code\nspan`, and *italic\ntoo*.\n',
  '<script>alert(1)</script> [x](javascript:alert(1)) <b onclick="x()">b</b> & é 🦙\n',
  '',
  '\n\n\n',
  'no newline at the end',
  '```\n',
  'Para\n```\nfenced right after a paragraph\n```\n- item\n# heading after a list\n',
];

// A small seeded random number generator (mulberry32), so that failures repeat.
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// The blocks of a whole text read the plain way: every line at once, through the parser.
function wholeText(text) {
  const p = new BlockParser();
  for (const line of text.replace(/\r\n?/g, '\n').split('\n')) p.line(line);
  p.close();
  return p.done;
}

function chunks(text, seed, max = 12) {
  const rand = rng(seed), out = [];
  for (let i = 0; i < text.length;) {
    const n = 1 + Math.floor(rand() * max);
    out.push(text.slice(i, i + n));
    i += n;
  }
  return out;
}

test('renders the Markdown subset as a plain tree', () => {
  const br = { type: 'br' };
  assert.deepEqual(parseMarkdown('# Title'), [{ type: 'heading', level: 1, children: ['Title'] }]);
  assert.deepEqual(parseMarkdown('#### deep ##'), [{ type: 'heading', level: 3, children: ['deep'] }]);
  assert.deepEqual(parseMarkdown('Some **bold** and *em*,\n`a*b*` \\*x\\*.'), [{
    type: 'p',
    children: ['Some ', { type: 'strong', children: ['bold'] }, ' and ', { type: 'em', children: ['em'] },
      ',', br, { type: 'code', text: 'a*b*' }, ' *x*.'],
  }]);
  assert.deepEqual(parseMarkdown('see [docs](https://x.y/z), [https://a.b](https://a.b), ![](p.png)'),
    [{ type: 'p', children: ['see docs (https://x.y/z), https://a.b, p.png'] }]);
  assert.deepEqual(parseMarkdown('3. a\n4. b\n  more\n- c'), [
    { type: 'list', ordered: true, start: 3, items: [['a'], ['b', br, 'more']] },
    { type: 'list', ordered: false, start: null, items: [['c']] },
  ]);
  assert.deepEqual(parseMarkdown('```py\nx = 1\n\ny\n```\n---\ntail'), [
    { type: 'code', lang: 'py', text: 'x = 1\n\ny' }, { type: 'hr' }, { type: 'p', children: ['tail'] },
  ]);
  assert.deepEqual(parseMarkdown('text\n```\nstill open'), [
    { type: 'p', children: ['text'] }, { type: 'code', lang: '', text: 'still open' },
  ]);
  assert.deepEqual(parseMarkdown('a\r\nb\r\n\r\nc'), [
    { type: 'p', children: ['a', br, 'b'] }, { type: 'p', children: ['c'] },
  ]);
  assert.deepEqual(parseMarkdown('```\ncode\r'), [{ type: 'code', lang: '', text: 'code\n' }]);
  assert.deepEqual(parseMarkdown(''), []);
  for (const text of SAMPLES) assert.deepEqual(parseMarkdown(text), wholeText(text));
});

test('renders to DOM elements with text only, never markup or links', () => {
  const d = fakeDocument();
  globalThis.document = d;
  try {
    for (const text of SAMPLES) renderMarkdown(new FakeElement('div', d), text);
    const el = renderMarkdown(new FakeElement('div', d), SAMPLES[7]);
    assert.deepEqual(serialize(el), ['div', {}, ['p', {},
      '<script>alert(1)</script> x (javascript:alert(1)) <b onclick="x()">b</b> & é 🦙']]);
    const allowed = ['p', 'h1', 'h2', 'h3', 'hr', 'ul', 'ol', 'li', 'br', 'code', 'strong', 'em', 'div', 'span',
      'button', 'pre'];
    assert.deepEqual([...d.tags].filter((t) => !allowed.includes(t)), []);
    const code = serialize(renderMarkdown(new FakeElement('div', d), '```sh\nls <dir>\n```'));
    assert.deepEqual(code, ['div', {}, ['div', { class: 'code-block' },
      ['div', { class: 'code-head' }, ['span', {}, 'sh'],
        ['button', { class: 'copy', attrs: { type: 'button', 'aria-label': 'Copy code' } }, 'Copy']],
      ['pre', {}, ['code', {}, 'ls <dir>']]]]);
    const ol = serialize(renderMarkdown(new FakeElement('div', d), '2. b\n3. c'));
    assert.deepEqual(ol, ['div', {}, ['ol', { start: 2 }, ['li', {}, 'b'], ['li', {}, 'c']]]);
  } finally {
    globalThis.document = doc;
  }
});

test('text fed in random chunks gives, at every step, the tree of the text so far', () => {
  for (const [i, text] of SAMPLES.entries()) {
    for (let seed = 1; seed <= 40; seed++) {
      const stream = new MarkdownStream();
      let sofar = '';
      for (const piece of chunks(text, seed * 100 + i, seed % 4 === 0 ? 3 : 12)) {
        stream.append(piece);
        sofar += piece;
        assert.deepEqual(stream.blocks(), wholeText(sofar), `sample ${i}, seed ${seed}, after ${JSON.stringify(sofar)}`);
      }
      assert.deepEqual(stream.blocks(), parseMarkdown(text));
    }
  }
});

test('one character at a time, including a "\\r\\n" split in two', () => {
  for (const text of SAMPLES) {
    const stream = new MarkdownStream();
    let sofar = '';
    for (const ch of text) {
      stream.append(ch);
      sofar += ch;
      assert.deepEqual(stream.blocks(), wholeText(sofar), `after ${JSON.stringify(sofar)}`);
    }
  }
});

test('finished blocks are parsed once and kept; only the open block is parsed again', () => {
  for (const [i, text] of SAMPLES.entries()) {
    const stream = new MarkdownStream();
    let seen = [];
    for (const piece of chunks(text, 7 + i)) {
      stream.append(piece);
      const done = stream.done;
      seen.forEach((block, k) => assert.equal(done[k], block, `sample ${i}: finished block ${k} was replaced`));
      seen = [...done];
      assert.ok(stream.pending().length <= 2, 'more than the open block is parsed again');
    }
    const full = parseMarkdown(text);
    assert.deepEqual(stream.done, full.slice(0, stream.done.length)); // finished means final
  }
});

test('LiveMarkdown keeps the elements of finished blocks and ends as a full render', () => {
  for (const [i, text] of SAMPLES.entries()) {
    for (let seed = 1; seed <= 10; seed++) {
      const box = root(), live = new LiveMarkdown(box);
      let kept = [];
      for (const piece of chunks(text, seed * 31 + i)) {
        live.append(piece);
        live.render();
        kept.forEach((node, k) => assert.equal(box.childNodes[k], node, `sample ${i}: element ${k} was rebuilt`));
        kept = box.childNodes.slice(0, live.shown);
      }
      live.render();
      assert.deepEqual(serialize(box), serialize(renderMarkdown(root(), text)), `sample ${i}, seed ${seed}`);
    }
  }
});

test('streaming a long reply builds each finished block once', () => {
  const paras = Array.from({ length: 150 }, (_, k) => `Paragraph ${k} has **bold** and \`code\` words.`);
  const text = `${paras.join('\n\n')}\n\n\`\`\`\n${'a line of code\n'.repeat(50)}\`\`\`\n`;
  const box = root(), live = new LiveMarkdown(box);
  let most = 0;
  for (const piece of chunks(text, 5, 6)) {
    live.append(piece);
    const before = doc.created;
    live.render();
    most = Math.max(most, doc.created - before);
  }
  const before = doc.created;
  const full = renderMarkdown(root(), text);
  const fullCost = doc.created - before;
  assert.deepEqual(serialize(box), serialize(full));
  assert.ok(fullCost > 400, fullCost);
  assert.ok(most <= 10, `one render built ${most} elements (a full render builds ${fullCost})`);
});

test('render() without new text does nothing', () => {
  const box = root(), live = new LiveMarkdown(box);
  live.append('Hello **wor');
  live.render();
  const nodes = [...box.childNodes], before = doc.created;
  live.render();
  assert.equal(doc.created, before);
  assert.deepEqual(box.childNodes, nodes);
});
