"""The generated packages of scripts/build-big-operator: PACKAGES packages of FUNCTIONS
ordinary functions each, all reachable, linked into a copy of the sample operator so that it
weighs 100 MB or more with DWARF.

    python -m bench.big_operator SRC PACKAGES FUNCTIONS
"""

import os
import sys


def generate(src: str, packages: int, functions: int) -> None:
    os.makedirs(f"{src}/gen/registry", exist_ok=True)
    with open(f"{src}/gen/registry/registry.go", "w") as f:
        f.write("package registry\n\n// Tables keeps every generated function reachable.\n"
                "var Tables [][]func(int, string) int\n\n"
                "func Add(t []func(int, string) int) { Tables = append(Tables, t) }\n")
    imports = []
    for p in range(packages):
        name = f"p{p:04d}"
        os.makedirs(f"{src}/gen/{name}", exist_ok=True)
        out = [f"package {name}\n", 'import (\n\t"strings"\n\n'
               '\t"example.com/sample-operator/gen/registry"\n)\n']
        for i in range(functions):
            # Ordinary code: branches, a loop, a string and a struct, so each function has line
            # tables, locals and DWARF like real code.
            out.append(f"""
type state{i} struct {{
	name  string
	count int
	tags  []string
}}

//go:noinline
func F{i}(n int, s string) int {{
	st := state{i}{{name: s, count: n}}
	for j := 0; j < n%7; j++ {{
		st.tags = append(st.tags, strings.Repeat("x", j))
		st.count += len(st.tags[j]) * {i + 1}
	}}
	switch {{
	case strings.HasPrefix(st.name, "{name}-{i}"):
		return st.count * 3
	case len(st.tags) > {i % 5 + 1}:
		return st.count - {p}
	}}
	return st.count + len(st.name)
}}
""")
        out.append("\nfunc init() {\n\tregistry.Add([]func(int, string) int{" +
                   ", ".join(f"F{i}" for i in range(functions)) + "})\n}\n")
        with open(f"{src}/gen/{name}/{name}.go", "w") as f:
            f.write("".join(out))
        imports.append(f'\t_ "example.com/sample-operator/gen/{name}"\n')
    with open(f"{src}/zz_big.go", "w") as f:
        f.write("package main\n\n// Generated packages: a big binary for the attach-pause bench.\n"
                "import (\n" + "".join(imports) + ")\n")


def main(argv: list[str] | None = None) -> None:
    src, packages, functions = (sys.argv[1:] if argv is None else argv)[:3]
    generate(src, int(packages), int(functions))


if __name__ == "__main__":
    main()
