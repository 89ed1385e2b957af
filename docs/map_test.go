// Package docs holds the project's design notes; its test keeps the
// package map in design.md true.
package docs

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode"

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

// TestDecisionTableNamesExist: every name in the place column of
// design.md's table of decisions exists: a package (a directory of Go
// files), a file, a package's identifier (pkg.Name, pkg.Type.Member), or a
// bare name after one of those in the same cell, found in that package
// (or, after a file that is no Go package, in the file's text).
func TestDecisionTableNamesExist(t *testing.T) {
	doc, err := os.ReadFile("design.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(doc), "<!-- decisions: begin -->")
	table, _, ok := strings.Cut(table, "<!-- decisions: end -->")
	if !ok {
		t.Fatal("design.md has no decisions table between its markers")
	}
	byName := map[string]string{} // package name -> directory
	rows := 0
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || strings.TrimSpace(cells[2]) == "place" || strings.HasPrefix(strings.TrimSpace(cells[2]), "---") {
			continue
		}
		rows++
		place := strings.Join(cells[2:len(cells)-1], "|")
		var pkgDir, file string // what a bare name is looked up in
		for i, tok := range strings.Split(place, "`") {
			if i%2 == 0 {
				continue
			}
			switch {
			case strings.Contains(tok, "/") && strings.Contains(filepath.Base(tok), "."):
				if _, err := os.Stat(filepath.Join("..", tok)); err != nil {
					t.Errorf("decision table: file %s does not exist", tok)
				}
				file, pkgDir = filepath.Join("..", tok), ""
			case isPackageDir(tok):
				pkgDir, file = filepath.Join("..", tok), ""
				byName[filepath.Base(tok)] = pkgDir
			case strings.Contains(tok, ".") && isPackageDir(strings.SplitN(tok, ".", 2)[0]) && !strings.HasSuffix(tok, ".go"):
				pkg, name, _ := strings.Cut(tok, ".")
				pkgDir, file = filepath.Join("..", pkg), ""
				if !declared(t, pkgDir, name) {
					t.Errorf("decision table: %s does not exist", tok)
				}
			case strings.HasSuffix(tok, ".go") && pkgDir != "":
				if _, err := os.Stat(filepath.Join(pkgDir, tok)); err != nil {
					t.Errorf("decision table: %s does not exist in %s", tok, pkgDir)
				}
			case pkgDir != "" && isIdent(tok):
				if !declared(t, pkgDir, tok) {
					t.Errorf("decision table: %s does not exist in %s", tok, pkgDir)
				}
			case file != "" && isIdent(tok):
				if b, _ := os.ReadFile(file); !strings.Contains(string(b), tok) {
					t.Errorf("decision table: %s is not in %s", tok, file)
				}
			}
		}
	}
	if rows < 20 {
		t.Errorf("decision table: %d rows read; the markers or the table's shape changed", rows)
	}
}

func isPackageDir(p string) bool {
	if p == "" || strings.ContainsAny(p, " .-") {
		return false
	}
	m, _ := filepath.Glob(filepath.Join("..", p, "*.go"))
	return len(m) > 0
}

func isIdent(s string) bool {
	for _, part := range strings.Split(s, ".") {
		if part == "" || !(unicode.IsLetter(rune(part[0])) || part[0] == '_') || strings.ContainsFunc(part, func(r rune) bool {
			return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '_'
		}) {
			return false
		}
	}
	return true
}

// declared reports whether name (Name, or Type.Member: a method or a
// struct field) is declared in the Go package in dir.
func declared(t *testing.T, dir, name string) bool {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, dir, func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatalf("parse %s: %v", dir, err)
	}
	typ, member, _ := strings.Cut(name, ".")
	for _, p := range pkgs {
		for _, f := range p.Files {
			for _, d := range f.Decls {
				switch d := d.(type) {
				case *ast.FuncDecl:
					recv := ""
					if d.Recv != nil && len(d.Recv.List) > 0 {
						recv = recvName(d.Recv.List[0].Type)
					}
					if (member == "" && recv == "" && d.Name.Name == typ) || (member != "" && recv == typ && d.Name.Name == member) {
						return true
					}
				case *ast.GenDecl:
					for _, s := range d.Specs {
						switch s := s.(type) {
						case *ast.TypeSpec:
							if s.Name.Name != typ {
								continue
							}
							if member == "" {
								return true
							}
							if st, ok := s.Type.(*ast.StructType); ok {
								for _, fld := range st.Fields.List {
									for _, n := range fld.Names {
										if n.Name == member {
											return true
										}
									}
								}
							}
						case *ast.ValueSpec:
							for _, n := range s.Names {
								if member == "" && n.Name == typ {
									return true
								}
							}
						}
					}
				}
			}
		}
	}
	return false
}

func recvName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.StarExpr:
		return recvName(e.X)
	case *ast.Ident:
		return e.Name
	case *ast.IndexExpr:
		return recvName(e.X)
	}
	return ""
}
