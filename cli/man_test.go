package cli

import (
	"bytes"
	"fmt"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/internal/testenv"
)

// render formats a page with the real groff, as man does, and fails on
// any warning (-ww enables them all). The text comes back as formatted,
// and with runs of white space collapsed, so that assertions on it do not
// depend on where groff broke lines.
func render(t *testing.T, page string) (formatted, text string) {
	t.Helper()
	groff := testenv.Tool(t, "groff", "apt-get install groff-base")
	// -P-cbou: plain characters, no SGR or overstriking for bold and
	// italics, so the text can be searched.
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-P-cbou")
	cmd.Stdin = strings.NewReader(page)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("groff: %v\n%s", err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Fatalf("groff warns about the page:\n%s", stderr.String())
	}
	// Debian's man.local renders \- as "-"; groff alone renders it as a
	// minus sign.
	formatted = strings.NewReplacer("\u2212", "-", "\u2010", "-").Replace(stdout.String())
	return formatted, collapse(formatted)
}

func collapse(s string) string { return strings.Join(strings.Fields(s), " ") }

// The page nix-hive prints must render without a single warning and
// describe every command, argument and flag the parser accepts, each
// with its help and detailed help as written.
func TestManPage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Main("1.2.3", []string{"man"}, &stdout, &stderr); code != 0 {
		t.Fatalf("nix-hive man: exit %d\n%s", code, stderr.String())
	}
	page := stdout.String()
	if !strings.HasPrefix(page, `.TH "NIX\-HIVE" "1" "" "nix\-hive 1.2.3" `) {
		t.Errorf("page does not start with its title line:\n%.200s", page)
	}
	formatted, text := render(t, page)

	// Headings are the only lines that start in the first column.
	headings := regexp.MustCompile(`(?m)^[A-Z][A-Z ]*$`).FindAllString(formatted, -1)
	want := []string{"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "GLOBAL OPTIONS", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"}
	if !slices.Equal(headings, want) {
		t.Errorf("sections %q, want %q", headings, want)
	}
	if !strings.Contains(text, "NAME nix-hive - deploy a handful of NixOS systems to fleets of hosts SYNOPSIS") {
		t.Errorf("NAME section is not 'nix-hive - description':\n%.300s", text)
	}

	// The model is built here independently of the page's own walk, so a
	// command the page forgets is caught.
	parser, err := kong.New(&CLI{}, kong.Name("nix-hive"))
	if err != nil {
		t.Fatal(err)
	}
	var commands int
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, c := range n.Children {
			if c.Hidden {
				continue
			}
			commands++
			if !strings.Contains(text, "nix-hive "+c.Path()) {
				t.Errorf("command %q is not on the page", c.Path())
			}
			for _, help := range []string{c.Help, c.Detail} {
				if !strings.Contains(text, collapse(help)) {
					t.Errorf("%s: help not rendered as written: %q", c.Path(), help)
				}
			}
			checkValues(t, text, c)
			walk(c)
		}
	}
	walk(parser.Model.Node)
	if commands < 14 {
		t.Errorf("only %d commands walked: the model is not what the page is built from", commands)
	}
	checkValues(t, text, parser.Model.Node)

	exit := section(text, "EXIT STATUS", "ENVIRONMENT")
	for _, c := range cmdline.Contract { // the contract, as --help and the README say it
		if want := fmt.Sprintf("%d %s", c.Code, strings.Fields(c.Meaning)[0]); !strings.Contains(exit, want) {
			t.Errorf("EXIT STATUS lacks %q: %s", want, exit)
		}
	}
	files := section(text, "FILES", "SEE ALSO")
	for _, f := range []string{"hive.nix", "flake.nix", "hive.star", "hive.state", ".nix-hive/"} {
		if !strings.Contains(files, f+" ") {
			t.Errorf("FILES lacks %s: %s", f, files)
		}
	}
	if env := section(text, "ENVIRONMENT", "FILES"); !strings.Contains(env, "NIX_HIVE_CONFIG Default for --config.") {
		t.Errorf("ENVIRONMENT lacks NIX_HIVE_CONFIG: %s", env)
	}
	// Words such as option names must stay whole for copying.
	if strings.Contains(text, "\u2010 ") || strings.Contains(text, "- -") {
		t.Error("the page hyphenates words across lines")
	}
}

// checkValues asserts that n's flags and arguments are on the page with
// their help.
func checkValues(t *testing.T, text string, n *kong.Node) {
	t.Helper()
	for _, f := range n.Flags {
		if f.Hidden {
			continue
		}
		label := "--" + f.Name
		if f.Tag.Negatable == "_" {
			label = "--[no-]" + f.Name
		}
		if !strings.Contains(text, label) || !strings.Contains(text, collapse(f.Help)) {
			t.Errorf("%s: flag --%s or its help %q is not on the page", n.Path(), f.Name, f.Help)
		}
		if f.HasDefault && f.Default != "" && !strings.Contains(text, collapse(f.Help)+" Default: "+f.Default) {
			t.Errorf("%s: --%s: default %s not given after its help", n.Path(), f.Name, f.Default)
		}
	}
	for _, p := range n.Positional {
		if !strings.Contains(text, p.Name+" "+collapse(p.Help)) && !strings.Contains(text, p.Name+" ...] "+collapse(p.Help)) &&
			!strings.Contains(text, p.Name+" ... "+collapse(p.Help)) {
			t.Errorf("%s: argument %s with its help %q is not on the page", n.Path(), p.Name, p.Help)
		}
	}
}

// section is the rendered text from one section heading to the next.
func section(text, from, to string) string {
	_, after, _ := strings.Cut(text, " "+from+" ")
	before, _, _ := strings.Cut(after, " "+to+" ")
	return before
}

// The statuses the page documents for wrong input are the ones nix-hive
// exits with.
func TestManExitStatus(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Main("test", []string{"man", "--no-such-flag"}, &stdout, &stderr); code != 2 {
		t.Errorf("unknown flag: exit %d, the page says 2\n%s", code, stderr.String())
	}
	nixtest.Require(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hive.nix"), []byte("{ instances = 3; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if code := Main("test", []string{"-c", dir, "plan"}, &stdout, &stderr); code != 2 {
		t.Errorf("invalid hive: exit %d, the page says 2\n%s", code, stderr.String())
	}
}
