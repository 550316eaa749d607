// The web chat's handling of reasoning models' thinking (templates/reasoning.js, and its
// saving in templates/store.js), under Node with a fake DOM: what the stream's deltas add
// up to, the "Thinking" disclosure, built at once or as it streams, and saving.
// Run: node --test tests/webchat_reasoning.test.mjs
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { FakeElement, fakeDocument, serialize } from './webchat_fakedom.mjs';

// Imported from a copy with a package.json that makes .js files ES modules (as in
// webchat_markdown.test.mjs).
const TEMPLATES = fileURLToPath(new URL('../templates/', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'webchat-think-'));
for (const name of readdirSync(TEMPLATES)) if (name.endsWith('.js')) copyFileSync(join(TEMPLATES, name), join(dir, name));
writeFileSync(join(dir, 'package.json'), '{"type": "module"}\n');
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const { LiveThinking, accumulate, pieces, thinkingNode } = await import(pathToFileURL(join(dir, 'reasoning.js')));
const { renderMarkdown } = await import(pathToFileURL(join(dir, 'markdown-dom.js')));
const { loadConv, saveConv } = await import(pathToFileURL(join(dir, 'store.js')));

const doc = fakeDocument();
globalThis.document = doc;
const div = () => new FakeElement('div', doc);

const REASONING = 'The user asks **2+2**.\n\n- add\n- check\n\n```\n2+2\n```\n<script>alert(1)</script> [x](javascript:y)\n';
const CONTENT = 'It is **4**.';

// Splits text into pieces of 1 to `max` characters, the same ones for the same seed.
function split(text, seed, max = 7) {
  const out = [];
  for (let i = 0; i < text.length;) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    const n = 1 + (seed % max);
    out.push(text.slice(i, i + n));
    i += n;
  }
  return out;
}

// The deltas of a stream like llama-server's: reasoning first, then the reply.
const deltas = (seed) => [
  { role: 'assistant', content: null },
  ...split(REASONING, seed).map((r) => ({ reasoning_content: r })),
  ...split(CONTENT, seed + 1).map((c) => ({ content: c })),
  {},
];

test('pieces() reads the text of one delta or message', () => {
  assert.deepEqual(pieces({ content: 'a' }), { content: 'a', reasoning: '' });
  assert.deepEqual(pieces({ reasoning_content: 'r', content: null }), { content: '', reasoning: 'r' });
  assert.deepEqual(pieces({ reasoning: 'r' }), { content: '', reasoning: 'r' }); // vLLM's newer name
  assert.deepEqual(pieces({ reasoning_content: 'r', reasoning: 'r' }), { content: '', reasoning: 'r' }); // once
  assert.deepEqual(pieces({ role: 'assistant', content: 'x', reasoning_content: 'y' }), { content: 'x', reasoning: 'y' });
  for (const odd of [undefined, null, {}, 'text', 3, { content: 5, reasoning_content: { a: 1 } }, { content: ['x'] }]) {
    assert.deepEqual(pieces(odd), { content: '', reasoning: '' }, JSON.stringify(odd));
  }
});

test('accumulate() puts a stream together, however it was split', () => {
  assert.deepEqual(accumulate([]), { content: '', reasoning: '' });
  for (let seed = 1; seed <= 50; seed++) {
    assert.deepEqual(accumulate(deltas(seed)), { content: CONTENT, reasoning: REASONING }, `seed ${seed}`);
  }
  // Interleaved, and with the final message's shape: each field keeps its own order.
  const mixed = [{ reasoning_content: 'a' }, { content: '1' }, { reasoning: 'b' }, { content: '2', reasoning_content: 'c' }];
  assert.deepEqual(accumulate(mixed), { content: '12', reasoning: 'abc' });
});

test('a saved reasoning shows in a closed "Thinking" disclosure, as text only', () => {
  const node = thinkingNode(REASONING);
  const [tag, props, summary, body] = serialize(node);
  assert.equal(tag, 'details');
  assert.deepEqual(props, { class: 'thinking' }); // no `open`: closed
  assert.deepEqual(summary, ['summary', {}, 'Thinking']);
  assert.deepEqual(body, serialize(renderMarkdown(Object.assign(div(), { className: 'thinking-body' }), REASONING)));
  assert.ok(body.flat(Infinity).includes('<script>alert(1)</script> x (javascript:y)'), JSON.stringify(body));
  const allowed = ['details', 'summary', 'div', 'p', 'ul', 'li', 'pre', 'code', 'strong', 'span', 'button'];
  assert.deepEqual([...doc.tags].filter((t) => !allowed.includes(t)), []);
});

test('streamed reasoning: "Thinking…" while it streams, then the same as a saved one', () => {
  for (let seed = 1; seed <= 20; seed++) {
    const msg = div(), content = div();
    content.className = 'content';
    msg.append(content);
    const live = new LiveThinking(msg);
    live.append('');
    live.render();
    live.end();
    assert.deepEqual(msg.childNodes, [content], 'a disclosure with nothing in it');
    let sofar = '', replying = false;
    for (const d of deltas(seed)) {
      const { content: text, reasoning } = pieces(d);
      live.append(reasoning);
      sofar += reasoning;
      if (text) { live.end(); replying = true; }
      if (seed % 2) live.render(); // rendered on some frames only
      if (!sofar) continue;
      assert.equal(msg.childNodes[0], live.node, 'the disclosure is first, above the reply');
      assert.equal(msg.childNodes[1], content);
      const [, props, summary] = serialize(live.node);
      assert.deepEqual(props, { class: replying ? 'thinking' : 'thinking live' });
      assert.deepEqual(summary, ['summary', {}, replying ? 'Thinking' : 'Thinking\u2026']);
    }
    live.render();
    live.end();
    assert.deepEqual(serialize(live.node), serialize(thinkingNode(REASONING)), `seed ${seed}`);
  }
});

test('a chat is saved with its reasoning, and without it when that does not fit', () => {
  const items = new Map();
  let quota = Infinity;
  globalThis.localStorage = {
    getItem: (k) => items.get(k) ?? null,
    setItem(k, v) {
      if (v.length > quota) throw new Error('QuotaExceededError');
      items.set(k, String(v));
    },
    removeItem: (k) => items.delete(k),
  };
  try {
    const reply = { role: 'assistant', content: CONTENT, reasoning: REASONING.repeat(50) };
    const conv = { id: 'c1', title: '', system: null, messages: [{ role: 'user', content: 'hi' }, reply], updated: 0 };
    saveConv(conv);
    assert.deepEqual(loadConv('c1').messages, conv.messages);
    quota = 2000; // room for the chat, not for its reasoning
    saveConv(conv);
    assert.deepEqual(loadConv('c1').messages, [{ role: 'user', content: 'hi' }, { role: 'assistant', content: CONTENT }]);
    assert.equal(reply.reasoning, REASONING.repeat(50), 'the page keeps it');
  } finally {
    delete globalThis.localStorage;
  }
});
