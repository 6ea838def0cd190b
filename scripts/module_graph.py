#!/usr/bin/env python3
"""Import circles between a crate's source files, long functions and long files.

Usage: scripts/module_graph.py CRATE_DIR [--max-fn 80] [--max-file 500]

Reads `use crate::…` / `crate::…` paths and `super::` paths in src/**/*.rs (test files,
`#[cfg(test)]` modules after their start, and files named tests.rs excluded), resolves each to
the file that defines the module (a child's use of its own ancestors does not count: that
is a folder module owning its shared types), and prints the strongly connected components of more than one
file (the circles), every production function longer than --max-fn lines and every source file
longer than --max-file lines whose first lines do not say why (a `//! Long:` line).
"""
import os
import re
import sys

def module_files(src):
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if not n.endswith('.rs'):
                continue
            p = os.path.join(root, n)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ('mod', 'lib', 'main'):
                rel = rel[:-1]
            files[tuple(rel)] = p
    return files

def is_test_file(path):
    return os.path.basename(path) == 'tests.rs' or '/tests/' in path

def production_text(text):
    """The file up to its first `#[cfg(test)]` item."""
    lines = text.split('\n')
    for i, l in enumerate(lines):
        if l.strip().startswith('#[cfg(test)]'):
            return '\n'.join(lines[:i])
    return text

PATH = re.compile(r'\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)')
USE_GROUP = re.compile(r'use\s+(crate|super|self)::\{([^;]*)\};', re.S)

def resolve(files, mod, parts):
    """The longest prefix of `parts` naming a file's module."""
    for n in range(len(parts), -1, -1):
        if tuple(parts[:n]) in files:
            return tuple(parts[:n])
    return None

def base(mod, head, is_dir_mod):
    if head == 'crate':
        return []
    here = list(mod) if is_dir_mod else list(mod)  # module path of this file
    if head == 'self':
        return here
    return here[:-1]  # super

def edges(files):
    out = {m: set() for m in files}
    for mod, path in files.items():
        if is_test_file(path):
            continue
        text = production_text(open(path).read())
        text = re.sub(r'//[^\n]*', '', text)
        is_dir = os.path.basename(path) in ('mod.rs', 'lib.rs', 'main.rs')
        targets = []
        for m in USE_GROUP.finditer(text):
            b = base(mod, m.group(1), is_dir)
            for item in re.split(r',(?![^{]*\})', m.group(2)):
                item = item.strip()
                name = re.match(r'[A-Za-z_][A-Za-z0-9_:]*', item)
                if name:
                    targets.append(b + [p for p in name.group(0).split('::') if p])
        text = USE_GROUP.sub('', text)
        for m in PATH.finditer(text):
            b = base(mod, m.group(1), is_dir)
            targets.append(b + [p for p in m.group(2).split('::') if p and p != '{'])
        # Bare paths into child modules (`validate::validate` in api/mod.rs).
        here = list(mod)
        for child in re.findall(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;', text, re.M):
            if tuple(here + [child]) in files and re.search(r'(?<![:\w])' + child + r'::', text):
                targets.append(here + [child])
        for t in targets:
            r = resolve(files, mod, t)
            # A child using its ancestor's items (`super::Index`) is the idiom of a folder
            # module owning its shared types, not a circle; the crate root likewise.
            if r is not None and r != mod and r != () and mod[:len(r)] != r:
                out[mod].add(r)
    return out

def sccs(graph):
    index, low, stack, on, res, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            res.append(comp)
    for v in graph:
        if v not in index:
            visit(v)
    return [c for c in res if len(c) > 1]

FN = re.compile(r'^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)')

def long_functions(path, limit):
    lines = production_text(open(path).read()).split('\n')
    found = []
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if m:
            depth, started, j = 0, False, i
            while j < len(lines):
                # Strings first: a URL's `//` inside a string is not a comment.
                code = re.sub(r'"(?:\\.|[^"\\])*"', '""', lines[j])
                code = re.sub(r'//.*', '', code)
                code = re.sub(r"'(?:\\.|[^'\\])'", "''", code)
                if not started and ';' in code and '{' not in code:
                    break
                depth += code.count('{') - code.count('}')
                if '{' in code:
                    started = True
                if started and depth <= 0:
                    break
                j += 1
            n = j - i + 1
            if started and n > limit:
                found.append((n, m.group(2), i + 1))
        i += 1
    return found

def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__); sys.exit(2)
    crate = args[0]
    max_fn = int(args[args.index('--max-fn') + 1]) if '--max-fn' in args else 80
    max_file = int(args[args.index('--max-file') + 1]) if '--max-file' in args else 500
    src = os.path.join(crate, 'src')
    files = module_files(src)
    name = lambda m: '::'.join(m) or 'lib'
    circles = sccs(edges(files))
    print(f'circles: {len(circles)}')
    for c in circles:
        print('  ' + ' , '.join(sorted(files[m].replace(src + "/", "") for m in c)))
    long_fns, long_files = [], []
    for mod, path in sorted(files.items()):
        if is_test_file(path):
            continue
        for n, f, line in long_functions(path, max_fn):
            long_fns.append((n, f'{path}:{line} {f}'))
        text = open(path).read()
        count = text.count('\n')
        if count > max_file and '//! Long:' not in '\n'.join(text.split('\n')[:15]):
            long_files.append((count, path))
    print(f'functions over {max_fn} lines: {len(long_fns)}')
    for n, f in sorted(long_fns, reverse=True):
        print(f'  {n:4} {f}')
    print(f'files over {max_file} lines without a reason: {len(long_files)}')
    for n, f in sorted(long_files, reverse=True):
        print(f'  {n:4} {f}')
    sys.exit(1 if circles or long_fns or long_files else 0)

if __name__ == '__main__':
    main()
