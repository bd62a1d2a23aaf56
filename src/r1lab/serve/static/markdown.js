"use strict";
// Model text as Markdown with LaTeX math, the way DeepSeek's app shows it: marked for the Markdown, KaTeX
// for the math ($..$, \(..\), $$..$$, \[..\], and a bare \boxed{..} or \frac{..}{..}). Both are vendored
// (static/vendor/), nothing is fetched from elsewhere.
//
// Safety: model text never becomes live HTML. Raw HTML in the Markdown is escaped (it shows as text),
// the rendered HTML goes through DOMPurify (no scripts, event handlers, javascript: links, images,
// styles) into an inert DOM fragment, and math is built by KaTeX as DOM nodes with trust off.
//
// Streaming: the text is cut into blocks at blank lines (outside code fences and display math); a block
// that has not changed keeps its DOM node, so only the growing last block is rendered again, at most
// once per animation frame. Math that is still incomplete shows as its source until it parses.
(function () {
  const OPEN = "\uE000", CLOSE = "\uE001";  // private-use characters around a math placeholder's number
  const BARE = { "\\boxed": 1, "\\frac": 2, "\\dfrac": 2, "\\tfrac": 2, "\\sqrt": 1 };  // command: brace groups

  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  const md = new window.marked.Marked({ gfm: true, breaks: true });
  md.use({ renderer: { html(token) { return escapeHtml(token.text); } } });

  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
  });
  const PURIFY = { USE_PROFILES: { html: true }, FORBID_TAGS: ["img", "style", "form", "button", "textarea", "select"],
                   FORBID_ATTR: ["style"], RETURN_DOM_FRAGMENT: true };

  // The end (exclusive) of `count` balanced {..} groups starting at i, or -1 if they are not all closed.
  function braceGroups(text, i, count) {
    for (let g = 0; g < count; g++) {
      while (text[i] === " ") i++;
      if (text[i] !== "{") return -1;
      let depth = 0;
      for (;; i++) {
        if (i >= text.length) return -1;
        if (text[i] === "\\") { i++; continue; }
        if (text[i] === "{") depth++;
        else if (text[i] === "}" && --depth === 0) { i++; break; }
      }
    }
    return i;
  }

  // Pull the math out of `text` (outside code), leaving numbered placeholders Markdown does not touch.
  function extractMath(text, maths) {
    let out = "", i = 0;
    const put = (tex, display, source) => { maths.push({ tex, display, source }); return OPEN + (maths.length - 1) + CLOSE; };
    while (i < text.length) {
      const rest = text.slice(i, i + 3);
      const lineStart = i === 0 || text[i - 1] === "\n";
      if (lineStart && (rest === "```" || rest === "~~~")) {  // a fenced code block: up to its closing fence
        const close = text.indexOf("\n" + rest, i + 3);
        const end = close < 0 ? text.length : close + 4;
        out += text.slice(i, end); i = end; continue;
      }
      if (text[i] === "`") {  // a code span: up to the same run of backticks
        let run = 1; while (text[i + run] === "`") run++;
        const fence = "`".repeat(run), close = text.indexOf(fence, i + run);
        const end = close < 0 ? i + run : close + run;
        out += text.slice(i, end); i = end; continue;
      }
      if (text[i] === "\\" && (text[i + 1] === "[" || text[i + 1] === "(")) {
        const closer = text[i + 1] === "[" ? "\\]" : "\\)", close = text.indexOf(closer, i + 2);
        if (close >= 0) {
          out += put(text.slice(i + 2, close), text[i + 1] === "[", text.slice(i, close + 2)); i = close + 2; continue;
        }
      }
      if (text[i] === "\\" && text[i + 1] === "$") { out += "\\$"; i += 2; continue; }
      if (text[i] === "$" && text[i + 1] === "$") {
        const close = text.indexOf("$$", i + 2);
        if (close >= 0) { out += put(text.slice(i + 2, close), true, text.slice(i, close + 2)); i = close + 2; continue; }
      }
      if (text[i] === "$" && text[i + 1] && !/\s/.test(text[i + 1])) {
        // inline $..$: the closing $ follows a non-space, is not followed by a digit, and is on this paragraph
        let close = i + 1;
        for (;;) {
          close = text.indexOf("$", close);
          if (close < 0 || text.slice(i, close).includes("\n\n")) { close = -1; break; }
          if (text[close - 1] !== "\\" && !/\s/.test(text[close - 1]) && !/[0-9]/.test(text[close + 1] || "")) break;
          close++;
        }
        if (close > i + 1) { out += put(text.slice(i + 1, close), false, text.slice(i, close + 1)); i = close + 1; continue; }
      }
      if (text[i] === "\\") {  // a bare \boxed{..} or \frac{..}{..} outside any delimiters
        const name = (/^\\[a-z]+/.exec(text.slice(i, i + 8)) || [""])[0];
        const end = BARE[name] ? braceGroups(text, i + name.length, BARE[name]) : -1;
        if (end > 0) { out += put(text.slice(i, end), false, text.slice(i, end)); i = end; continue; }
      }
      out += text[i]; i++;
    }
    return out;
  }

  function renderMath(item) {
    const span = document.createElement("span");
    try {
      window.katex.render(item.tex, span, { displayMode: item.display, throwOnError: true, strict: "ignore",
                                            trust: false, maxSize: 50, maxExpand: 500 });
    } catch (e) {  // not (yet) valid TeX: its source, as text
      span.className = "math-source";
      span.textContent = item.source;
    }
    return span;
  }

  // Replace the placeholders in the fragment's text nodes by rendered math.
  function insertMath(root, maths) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    const nodes = [];
    while (walker.nextNode()) if (walker.currentNode.nodeValue.includes(OPEN)) nodes.push(walker.currentNode);
    const pattern = new RegExp(OPEN + "(\\d+)" + CLOSE, "g");
    for (const node of nodes) {
      const parts = document.createDocumentFragment();
      let last = 0, m;
      const value = node.nodeValue;
      pattern.lastIndex = 0;
      while ((m = pattern.exec(value))) {
        parts.append(value.slice(last, m.index), maths[Number(m[1])] ? renderMath(maths[Number(m[1])]) : "");
        last = m.index + m[0].length;
      }
      parts.append(value.slice(last));
      node.replaceWith(parts);
    }
  }

  // One block of Markdown -> a sanitised DOM node.
  function renderBlock(source) {
    const maths = [];
    const html = md.parse(extractMath(source.replace(/[\uE000\uE001]/g, ""), maths)).trim();
    const fragment = window.DOMPurify.sanitize(html, PURIFY);
    insertMath(fragment, maths);
    const block = document.createElement("div");
    block.className = "md-block";
    block.append(fragment);
    return block;
  }

  // Cut text into blocks at blank lines outside code fences and display math; an indented line after a
  // blank line continues its block (a list item's next paragraph).
  function splitBlocks(text) {
    const blocks = [];
    let current = [], fence = null, display = null, blank = false;
    for (const line of text.split("\n")) {
      const trimmed = line.trim();
      if (fence === null && display === null && blank && trimmed && !/^\s/.test(line) && current.some((l) => l.trim())) {
        blocks.push(current.join("\n"));
        current = [];
      }
      current.push(line);
      blank = trimmed === "";
      if (fence !== null) { if (trimmed.startsWith(fence)) fence = null; continue; }
      if (/^(```|~~~)/.test(trimmed)) { fence = trimmed.slice(0, 3); continue; }
      const dollars = (line.match(/\$\$/g) || []).length;
      if (display === "$$" ? dollars % 2 === 1 : display === "\\[" ? line.includes("\\]") : false) { display = null; continue; }
      if (display === null && dollars % 2 === 1) display = "$$";
      else if (display === null && line.includes("\\[") && !line.slice(line.lastIndexOf("\\[")).includes("\\]")) display = "\\[";
    }
    if (current.length) blocks.push(current.join("\n"));
    return blocks;
  }

  // Keeps `element` showing `text` rendered; update() as text grows, flush() at the end. hooks.before()
  // runs before each render and its result goes to hooks.after(result) (to keep a scroll position).
  class LiveMarkdown {
    constructor(element, hooks) {
      this.element = element; this.hooks = hooks || {}; this.sources = []; this.text = ""; this.frame = 0;
    }

    update(text) {
      this.text = text;
      if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
    }

    flush(text) {
      if (text !== undefined) this.text = text;
      if (this.frame) { cancelAnimationFrame(this.frame); this.frame = 0; }
      this.render();
    }

    render() {
      const state = this.hooks.before ? this.hooks.before() : undefined;
      const blocks = splitBlocks(this.text);
      const children = this.element.children;
      blocks.forEach((source, i) => {
        if (this.sources[i] === source && children[i]) return;
        const node = renderBlock(source);
        if (children[i]) children[i].replaceWith(node); else this.element.append(node);
        this.sources[i] = source;
      });
      while (children.length > blocks.length) children[children.length - 1].remove();
      this.sources.length = blocks.length;
      if (this.hooks.after) this.hooks.after(state);
    }
  }

  window.R1Markdown = { LiveMarkdown, renderBlock, splitBlocks };
})();
