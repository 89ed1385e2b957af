package cli_test

import (
	"bytes"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-hive/nix-hive/cli"
	"github.com/nix-hive/nix-hive/internal/nixtest"
	"github.com/nix-hive/nix-hive/internal/testenv"
)

// seedHive is a copy of examples/seed, evaluated as it is (no lab: plan
// touches no host).
func seedHive(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	copyTree(t, filepath.Join(root, "examples"), filepath.Join(work, "examples"))
	return filepath.Join(work, "examples", "seed")
}

func runPlan(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = cli.Main("test", append([]string{"-c", dir, "plan"}, args...), &o, &e)
	if len(o.String()) < 4000 {
		t.Logf("nix-hive plan %s: exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(args, " "), code, o.String(), e.String())
	} else {
		t.Logf("nix-hive plan %s: exit %d, %d bytes out\n--- stderr\n%s", strings.Join(args, " "), code, o.Len(), e.String())
	}
	return code, o.String(), e.String()
}

// svgTexts checks that svg is well-formed XML with an <svg> root and
// returns the text of its <text> elements, which is where Graphviz puts
// node, edge and cluster labels.
func svgTexts(t *testing.T, svg string) []string {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(svg))
	// The DOCTYPE names an external DTD; nothing needs fetching to check
	// well-formedness.
	d.Strict = true
	var texts []string
	root, inText := "", false
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
			inText = tok.Name.Local == "text"
		case xml.EndElement:
			inText = false
		case xml.CharData:
			if inText {
				texts = append(texts, strings.TrimSpace(string(tok)))
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element is <%s>, want <svg>", root)
	}
	return texts
}

// checkSeedSVG: every instance of the seed example, and its wave, are
// drawn.
func checkSeedSVG(t *testing.T, svg string) {
	t.Helper()
	texts := svgTexts(t, svg)
	has := map[string]bool{}
	for _, s := range texts {
		has[s] = true
	}
	for _, want := range []string{"portico", "storage", "www-1", "www-2", "www-3", "wave 1 (5 hosts)", "deploy host"} {
		if !has[want] {
			t.Errorf("SVG has no text %q; its texts: %q", want, texts)
		}
	}
}

// TestPlanSVGSeed renders the seed example's plan with the real Graphviz.
func TestPlanSVGSeed(t *testing.T) {
	nixtest.Require(t)
	testenv.Tool(t, "dot", "apt-get install graphviz")
	dir := seedHive(t)
	code, out, stderr := runPlan(t, dir, "--format", "svg")
	if code != 0 {
		t.Fatalf("plan --format svg: exit %d: %s", code, stderr)
	}
	checkSeedSVG(t, out)
}

// TestPlanDotSeed pipes `plan --format dot` through Graphviz's own dot,
// as a user would: it must draw it, and say nothing about it.
func TestPlanDotSeed(t *testing.T) {
	nixtest.Require(t)
	dot := testenv.Tool(t, "dot", "apt-get install graphviz")
	dir := seedHive(t)
	code, graph, stderr := runPlan(t, dir, "--format", "dot")
	if code != 0 {
		t.Fatalf("plan --format dot: exit %d: %s", code, stderr)
	}
	// www-1..3 reach the world through portico.
	if n := strings.Count(graph, `"h:portico" -> "h:www-`); n != 6 {
		t.Errorf("%d edges from portico to www hosts, want 6 (3 substitutions, 3 jump hops):\n%s", n, graph)
	}
	var svg, dotErr bytes.Buffer
	cmd := exec.Command(dot, "-Tsvg")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(graph), &svg, &dotErr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dot -Tsvg: %v\n%s\n--- graph\n%s", err, dotErr.String(), graph)
	}
	if dotErr.Len() > 0 {
		t.Errorf("dot -Tsvg warns:\n%s", dotErr.String())
	}
	checkSeedSVG(t, svg.String())
}

// TestPlanSVGNeedsGraphviz: without dot on PATH, --format svg fails saying
// what to install, and prints no half a document.
func TestPlanSVGNeedsGraphviz(t *testing.T) {
	nixtest.Require(t)
	dir := seedHive(t) // with cp, before PATH loses it
	// A PATH with Nix's tools (the hive is evaluated first) but no dot.
	bin := t.TempDir()
	for _, tool := range []string{"nix", "nix-store", "nix-env", "nix-instantiate", "nix-build"} {
		if p, err := exec.LookPath(tool); err == nil {
			if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Setenv("PATH", bin)
	code, out, stderr := runPlan(t, dir, "--format", "svg")
	if code != 2 || out != "" {
		t.Fatalf("exit %d, stdout %q; want 2 (usage: a tool the command line needs is missing) and nothing", code, out)
	}
	for _, want := range []string{"apt-get install graphviz", "--format dot"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q does not say %q", stderr, want)
		}
	}
}
