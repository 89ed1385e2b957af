// Package docs holds the project's design notes; its test keeps the
// package map in design.md true.
package docs

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/internal/cmdline"
)

const module = "github.com/nix-hive/nix-hive/"

// TestMapMatchesGoList: the imports table in design.md is what go list
// says, package by package.
func TestMapMatchesGoList(t *testing.T) {
	doc, err := os.ReadFile("design.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string][]string{}
	_, table, _ := strings.Cut(string(doc), "<!-- imports: begin -->")
	table, _, _ = strings.Cut(table, "<!-- imports: end -->")
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 3 || !strings.Contains(cells[1], "`") {
			continue
		}
		var imports []string
		if c := strings.TrimSpace(cells[2]); c != "(none)" {
			for _, i := range strings.Split(c, ",") {
				imports = append(imports, strings.TrimSpace(i))
			}
		}
		for _, p := range strings.Split(cells[1], ",") {
			documented[strings.Trim(strings.TrimSpace(p), "`")] = imports
		}
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}:{{join .Imports " "}}`, "../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, ":")
		pkg = strings.TrimPrefix(pkg, module)
		if strings.HasPrefix(pkg, "bench") || pkg == "docs" {
			continue
		}
		var own []string
		for _, i := range strings.Fields(imports) {
			if strings.HasPrefix(i, module) {
				own = append(own, strings.TrimPrefix(i, module))
			}
		}
		slices.Sort(own)
		want, ok := documented[pkg]
		if !ok {
			t.Errorf("design.md's map lacks package %s (imports %v)", pkg, own)
			continue
		}
		if !slices.Equal(want, own) {
			t.Errorf("design.md says %s imports %v; go list says %v", pkg, want, own)
		}
		delete(documented, pkg)
	}
	for pkg := range documented {
		t.Errorf("design.md's map lists %s, which go list does not know", pkg)
	}
}

// TestExitStatusTableMatchesContract: the README's table of exit statuses
// is cmdline.Contract, which --help prints and the cli tests enforce.
func TestExitStatusTableMatchesContract(t *testing.T) {
	doc, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(doc), "<!-- exit-status: begin -->")
	table, _, _ = strings.Cut(table, "<!-- exit-status: end -->")
	var rows []string
	for _, line := range strings.Split(table, "\n") {
		if cells := strings.Split(line, "|"); len(cells) == 4 && strings.TrimSpace(cells[1]) != "status" && !strings.HasPrefix(strings.TrimSpace(cells[1]), "-") {
			rows = append(rows, strings.TrimSpace(cells[1])+" "+strings.TrimSpace(cells[2]))
		}
	}
	var want []string
	for _, c := range cmdline.Contract {
		want = append(want, fmt.Sprintf("%d %s", c.Code, c.Meaning))
	}
	if !slices.Equal(rows, want) {
		t.Errorf("README's exit statuses:\n%s\nwant cmdline.Contract:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
}
