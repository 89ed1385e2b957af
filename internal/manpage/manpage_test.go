package manpage

import (
	"bytes"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/internal/testenv"
)

// render formats a page with the real groff, as man does, and fails on
// any warning (-ww enables them all). The text comes back as formatted,
// and with runs of white space collapsed. (cli's TestManPage renders
// nix-hive's own page the same way.)
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
	return formatted, strings.Join(strings.Fields(formatted), " ")
}

func page(t *testing.T, app *kong.Application, p Page) string {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, app, p); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Text that roff would take for requests, escapes or fonts must come out
// exactly as written.
func TestManEscapes(t *testing.T) {
	type hostile struct {
		Path   string `arg:"" help:"'quoted' at the start, a \\back\\slash\\, \"double\" quotes, ~/.ssh, a^b, --x and \\fBnot bold\\fR."`
		Dashes string `default:"-.-'x\"y" help:".. a line of dots"`
	}
	type grammar struct {
		Do struct {
			hostile
		} `cmd:"" name:"do-it" help:".TH looks like a request"`
	}
	parser, err := kong.New(&grammar{}, kong.Name("hostile"), kong.Description(".SH not a section\n'br not a request"))
	if err != nil {
		t.Fatal(err)
	}
	parser.Model.Children[0].Detail = "First line.\n.SH NOT A SECTION\n'tis a line\n\n  .indented \\n example\n  'second\n\\fIlast"
	_, text := render(t, page(t, parser.Model, Page{
		Version:     "v1",
		Description: ".B not bold\n'also not a request",
		ExitStatus:  []Entry{{Term: "-1", Text: ".exit 'status'"}},
		Files:       []Entry{{Term: ".hidden/", Text: "\\fBfile\\fR"}},
		SeeAlso:     []string{"a-b(1)", "c_d(5)"},
	}))
	for _, want := range []string{
		`hostile - .SH not a section 'br not a request SYNOPSIS`,
		`hostile do-it .TH looks like a request First line. .SH NOT A SECTION 'tis a line .indented \n example 'second \fIlast`,
		`'quoted' at the start, a \back\slash\, "double" quotes, ~/.ssh, a^b, --x and \fBnot bold\fR.`,
		`--dashes=DASHES .. a line of dots Default: -.-'x"y`,
		`request .B not bold 'also not a request COMMANDS`,
		`EXIT STATUS -1 .exit 'status'`,
		`FILES .hidden/ \fBfile\fR SEE ALSO a-b(1), c_d(5)`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("page lost %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "\u2018") || strings.Contains(text, "\u2019") || strings.Contains(text, "\u02dc") || strings.Contains(text, "\u02c6") {
		t.Errorf("quotes, ~ or ^ rendered as typographic glyphs:\n%s", text)
	}
}

// The sections a Page leaves empty are left out; the others are in the
// order of man-pages(7).
func TestManSections(t *testing.T) {
	type grammar struct {
		Name string   `env:"TOY_NAME" help:"A name."`
		Do   struct{} `cmd:"" help:"Do it."`
	}
	parser, err := kong.New(&grammar{}, kong.Name("toy"), kong.Description("Do things."))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		page Page
		want []string
	}{
		{Page{}, []string{"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "GLOBAL OPTIONS", "ENVIRONMENT"}},
		{Page{ExitStatus: []Entry{{Term: "0", Text: "Fine."}}, Files: []Entry{{Term: "f", Text: "A file."}}, SeeAlso: []string{"ls(1)"}},
			[]string{"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "GLOBAL OPTIONS", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"}},
	} {
		formatted, _ := render(t, page(t, parser.Model, c.page))
		headings := regexp.MustCompile(`(?m)^[A-Z][A-Z ]*$`).FindAllString(formatted, -1)
		if !slices.Equal(headings, c.want) {
			t.Errorf("sections %q, want %q", headings, c.want)
		}
	}
}
