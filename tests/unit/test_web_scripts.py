"""The web pages' scripts (deepseekd/web/static/**/*.js), read as text: no browser, no node.

* No function body is longer than MAX_LINES lines unless a comment containing ``long:`` and a
  reason sits on the line before its opening, the opening line itself or the line after it.
* The two pages share one implementation of the server calls (static/lib/api.js): chat.js and
  admin.js define no ``$``, ``ApiError``, ``readError``, ``api`` or ``apiJson`` of their own, and
  both HTML pages load lib/api.js.

The function scan (``function_bodies``) is a small hand-written lexer, not a JavaScript parser:

* It skips ``// …`` and ``/* … */`` comments, '…' and "…" strings and `…` template literals,
  following ``${ … }`` inside templates (nested templates included).
* A ``/`` starts a regular-expression literal when the previous significant character is an
  operator or opening punctuation (``( , = : [ ! & | ? { } ; + - * % < > ~ ^``), or the previous
  word is a keyword such as ``return`` or ``typeof``; the literal runs to the next unescaped
  ``/`` outside a ``[…]`` class. A regex after ``)`` (``if (x) /re/.test(y)``) would be read as
  a division: this code has none; should one appear, the brace count goes wrong and the scan
  fails loudly on unbalanced braces rather than passing silently.
* A ``{`` opens a function body when it follows ``=>``, or follows ``)`` whose matching ``(``
  comes after ``function``, ``function name`` or a method name (``name(…) {``, ``get x() {``,
  ``async *gen() {``) that is not a control keyword (``if``, ``for``, ``while``, ``switch``,
  ``catch``, ``with``). Class bodies, object literals and blocks are not functions. Computed
  method names (``[key]() {}``) are not recognised.
* A body's length is counted from the line of its ``{`` to the line of its ``}``, both included;
  a nested function counts towards its enclosing function too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "deepseekd" / "web"
STATIC = WEB / "static"
MAX_LINES = 60
CONTROL = {"if", "for", "while", "switch", "catch", "with", "return", "typeof", "await", "new",
           "in", "of", "do", "else", "yield", "void", "delete"}
REGEX_AFTER_CHARS = set("(,=:[!&|?{};+-*%<>~^")
REGEX_AFTER_WORDS = {"return", "typeof", "case", "do", "else", "in", "of", "new", "delete",
                     "void", "throw", "yield", "await"}
WORD = re.compile(r"[A-Za-z0-9_$]")


@dataclass
class Body:
    name: str
    open_line: int  # 1-based line of the opening brace
    close_line: int

    @property
    def lines(self) -> int:
        return self.close_line - self.open_line + 1


@dataclass
class _Tok:
    kind: str  # "word", "punct", "=>" (arrow), "str", "regex"
    text: str
    line: int


class ScanError(Exception):
    pass


def _lex(src: str) -> tuple[list[_Tok], dict[int, list[str]]]:
    """Tokens that matter for brace matching, and the comments on each line."""
    toks: list[_Tok] = []
    comments: dict[int, list[str]] = {}
    i, line, n = 0, 1, len(src)
    # One entry per open template literal: the brace depth inside its current ${ … }.
    templates: list[int] = []

    def prev_allows_regex() -> bool:
        if not toks:
            return True
        t = toks[-1]
        if t.kind == "word":
            return t.text in REGEX_AFTER_WORDS
        if t.kind == "=>":
            return True
        return t.kind == "punct" and t.text in REGEX_AFTER_CHARS

    def read_template(i: int, line: int) -> tuple[int, int, bool]:
        """From just inside a template literal to its end (True) or to a ${ (False)."""
        while i < n:
            c = src[i]
            if c == "\\":
                line += src[i + 1 : i + 2] == "\n"
                i += 2
            elif c == "`":
                return i + 1, line, True
            elif c == "$" and src[i + 1 : i + 2] == "{":
                return i + 2, line, False
            else:
                line += c == "\n"
                i += 1
        raise ScanError(f"unterminated template literal (line {line})")

    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif src.startswith("//", i):
            end = src.find("\n", i)
            end = n if end < 0 else end
            comments.setdefault(line, []).append(src[i:end])
            i = end
        elif src.startswith("/*", i):
            end = src.find("*/", i + 2)
            if end < 0:
                raise ScanError(f"unterminated comment (line {line})")
            text = src[i : end + 2]
            comments.setdefault(line, []).append(text)
            line += text.count("\n")
            i = end + 2
        elif c in "'\"":
            j = i + 1
            while j < n and src[j] != c:
                if src[j] == "\n":
                    raise ScanError(f"newline in a string (line {line})")
                j += 2 if src[j] == "\\" else 1
            toks.append(_Tok("str", src[i : j + 1], line))
            i = j + 1
        elif c == "`":
            i, line, closed = read_template(i + 1, line)
            if not closed:
                templates.append(0)
            toks.append(_Tok("str", "`", line))
        elif c == "/" and prev_allows_regex():
            j, in_class = i + 1, False
            while j < n and (in_class or src[j] != "/"):
                if src[j] == "\n":
                    raise ScanError(f"newline in a regular expression (line {line})")
                if src[j] == "\\":
                    j += 1
                elif src[j] == "[":
                    in_class = True
                elif src[j] == "]":
                    in_class = False
                j += 1
            j += 1
            while j < n and WORD.match(src[j]):
                j += 1  # flags
            toks.append(_Tok("regex", src[i:j], line))
            i = j
        elif WORD.match(c):
            j = i
            while j < n and WORD.match(src[j]):
                j += 1
            toks.append(_Tok("word", src[i:j], line))
            i = j
        elif src.startswith("=>", i):
            toks.append(_Tok("=>", "=>", line))
            i += 2
        elif c == "}" and templates and templates[-1] == 0:
            # The end of a ${ … }: back into the template literal.
            templates.pop()
            i, line, closed = read_template(i + 1, line)
            if not closed:
                templates.append(0)
            toks.append(_Tok("str", "`", line))
        else:
            if templates and c == "{":
                templates[-1] += 1
            elif templates and c == "}":
                templates[-1] -= 1
            toks.append(_Tok("punct", c, line))
            i += 1
    if templates:
        raise ScanError("unterminated template literal")
    return toks, comments


def _function_name(toks: list[_Tok], brace: int) -> str | None:
    """The function's name when toks[brace] (a "{") opens a function body, else None."""
    prev = toks[brace - 1] if brace else None
    if prev is None:
        return None
    if prev.kind == "=>":
        return "(arrow)"
    if prev.kind != "punct" or prev.text != ")":
        return None
    depth, j = 0, brace - 1
    while j >= 0:  # back to the matching "("
        t = toks[j]
        if t.kind == "punct" and t.text == ")":
            depth += 1
        elif t.kind == "punct" and t.text == "(":
            depth -= 1
            if depth == 0:
                break
        j -= 1
    if j <= 0:
        return None
    before = toks[j - 1]
    if before.kind == "word" and before.text == "function":
        return "(anonymous function)"
    if before.kind == "punct" and before.text == "*":  # function* () / *gen()
        before = toks[j - 2] if j >= 2 else before
        if before.kind == "word" and before.text == "function":
            return "(anonymous generator)"
    if before.kind == "word" and before.text not in CONTROL:
        return before.text
    return None


def function_bodies(src: str) -> tuple[list[Body], dict[int, list[str]]]:
    """Every function body in ``src`` with its lines, and the comments by line."""
    toks, comments = _lex(src)
    stack: list[tuple[int, str | None]] = []
    bodies: list[Body] = []
    for k, t in enumerate(toks):
        if t.kind != "punct" or t.text not in "{}":
            continue
        if t.text == "{":
            stack.append((k, _function_name(toks, k)))
            continue
        if not stack:
            raise ScanError(f"unbalanced '}}' on line {t.line}")
        start, name = stack.pop()
        if name is not None:
            bodies.append(Body(name, toks[start].line, t.line))
    if stack:
        raise ScanError(f"unclosed '{{' from line {toks[stack[-1][0]].line}")
    return bodies, comments


def _excused(body: Body, comments: dict[int, list[str]]) -> bool:
    near = (body.open_line - 1, body.open_line, body.open_line + 1)
    return any("long:" in c for ln in near for c in comments.get(ln, []))


def _scripts() -> list[Path]:
    return sorted(STATIC.rglob("*.js"))


def test_the_scan_finds_functions_and_skips_strings() -> None:
    src = (
        "const a = `x ${ {b: 1}.b } }` + '{' + \"}\"; // {\n"
        "const re = /[{}]\\//g;\n"
        "/* { */ function f(x) {\n"
        "  if (x) { return () => {\n"
        "    return { k: `${x}` };\n"
        "  }; }\n"
        "}\n"
        "class C extends Error { constructor(m) { super(m); } get v() { return 1; } }\n"
        "const g = async function* () { yield 1; };\n"
        "obj.on('x', (e) => e);\n"
        "for (const y of z) { s = y / 2; }\n"
    )
    bodies, comments = function_bodies(src)
    assert sorted((b.name, b.open_line, b.close_line) for b in bodies) == sorted([
        ("f", 3, 7), ("(arrow)", 4, 6), ("constructor", 8, 8), ("v", 8, 8),
        ("(anonymous generator)", 9, 9),
    ])
    assert comments[1] == ["// {"] and comments[3] == ["/* { */"]


def test_a_long_comment_excuses_a_long_function() -> None:
    filler = "  x += 1;\n" * MAX_LINES
    for before, after, excused in [
        ("// long: one table of cases\n", "", True),
        ("", "  // long: one table of cases\n", True),
        ("// too long, sorry\n", "", False),
        ("const s = '// long: in a string';\n", "", False),
    ]:
        src = f"{before}function f(x) {{\n{after}{filler}}}\n"
        [body], comments = function_bodies(src)
        assert body.lines > MAX_LINES
        assert _excused(body, comments) is excused, (before, after)


@pytest.mark.parametrize("path", _scripts(), ids=lambda p: str(p.relative_to(STATIC)))
def test_no_function_is_longer_than_60_lines(path: Path) -> None:
    bodies, comments = function_bodies(path.read_text(encoding="utf-8"))
    assert bodies, f"no functions found in {path.name}: the scan is broken"
    too_long = [f"{b.name} (line {b.open_line}, {b.lines} lines)" for b in bodies
                if b.lines > MAX_LINES and not _excused(b, comments)]
    assert not too_long, (
        f"{path.name}: functions over {MAX_LINES} lines; split them, or say why not in a "
        f"'// long: <reason>' comment beside the opening line: {too_long}")


@pytest.mark.parametrize("page", ["chat.js", "admin.js"])
def test_pages_use_the_shared_api_module(page: Path) -> None:
    src = (STATIC / page).read_text(encoding="utf-8")
    for name in ("ApiError", "readError", "api", "apiJson", "$"):
        own = re.compile(r"(?:^|[^\w$.])(?:(?:async\s+)?function\*?|class|const|let|var)\s+"
                         + re.escape(name) + r"(?![\w$])", re.M)
        assert not own.search(src), f"{page} defines its own {name}: import it from lib/api.js"
    assert re.search(r"""^import\s*\{[^}]*\}\s*from\s*["']\./lib/api\.js["']""", src, re.M), page


@pytest.mark.parametrize("page", ["chat.html", "admin.html"])
def test_pages_load_the_shared_api_module(page: str) -> None:
    html = (WEB / page).read_text(encoding="utf-8")
    assert re.search(r"""<script\b[^>]*\bsrc=["']/static/lib/api\.js["']"""
                     r"""|<link\b[^>]*\brel=["']modulepreload["'][^>]*"""
                     r"""\bhref=["']/static/lib/api\.js["']""", html), \
        f"{page} does not load /static/lib/api.js"
    assert (STATIC / "lib" / "api.js").is_file()
