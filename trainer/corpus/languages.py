"""Language map: file name or extension -> language name (what lands in a record's ``lang``).

A path whose language is unknown is skipped with reason ``unknown-language``; the map is
deliberately about source code, so data formats (csv, tsv …) are absent on purpose.
"""

from __future__ import annotations

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyx": "cython",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript",
    ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".kts": "kotlin",
    ".scala": "scala", ".groovy": "groovy", ".gradle": "groovy", ".clj": "clojure",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".cu": "cuda", ".cuh": "cuda", ".cs": "csharp", ".fs": "fsharp", ".vb": "visualbasic",
    ".m": "objective-c", ".mm": "objective-c", ".swift": "swift", ".dart": "dart",
    ".rb": "ruby", ".php": "php", ".pl": "perl", ".pm": "perl", ".lua": "lua", ".r": "r",
    ".jl": "julia", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".hs": "haskell",
    ".ml": "ocaml", ".mli": "ocaml", ".elm": "elm", ".zig": "zig", ".nim": "nim", ".v": "verilog",
    ".sv": "systemverilog", ".vhd": "vhdl", ".f90": "fortran", ".f": "fortran",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".fish": "shell", ".ps1": "powershell",
    ".sql": "sql", ".proto": "protobuf", ".graphql": "graphql", ".gql": "graphql",
    ".html": "html", ".htm": "html", ".css": "css", ".scss": "scss", ".sass": "sass",
    ".less": "less", ".vue": "vue", ".svelte": "svelte",
    ".md": "markdown", ".rst": "restructuredtext", ".tex": "tex",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini",
    ".json": "json", ".xml": "xml", ".tf": "terraform", ".hcl": "hcl", ".cmake": "cmake",
    ".mk": "makefile", ".nix": "nix", ".sol": "solidity", ".asm": "assembly", ".s": "assembly",
}

FILENAMES: dict[str, str] = {
    "Makefile": "makefile", "makefile": "makefile", "GNUmakefile": "makefile",
    "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake", "Jenkinsfile": "groovy",
    "Rakefile": "ruby", "Gemfile": "ruby", "BUILD": "starlark", "WORKSPACE": "starlark",
}


def language_of(path: str) -> str | None:
    """The language of ``path`` by file name, then by (lower-cased) extension; None if unknown.

    The extension is ``posixpath.splitext``'s (leading dots of the name do not start one),
    found without its function calls: this runs for every path of every build."""
    base = path[path.rfind("/") + 1:]
    lang = FILENAMES.get(base)
    if lang is not None:
        return lang
    if base.startswith("Dockerfile."):
        return "dockerfile"
    dot = base.rfind(".")
    if dot <= 0 or not base[:dot].strip("."):
        return None
    return EXTENSIONS.get(base[dot:].lower())
