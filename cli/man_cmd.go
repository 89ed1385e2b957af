package cli

import (
	"io"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/alecthomas/kong"
)

// ManCmd is `nix-hive man`.
type ManCmd struct{}

func (c *ManCmd) Help() string {
	return `Prints nix-hive's manual page (roff, section 1) on stdout. It is generated
from the command model that parses the command line, so it always describes
the flags this binary accepts. Read it with
  nix-hive man | man -l -
or install it as man1/nix-hive.1 (the Nix package does).`
}

// The model is the parser's own (kong binds its *Context to Run), not a
// second kong.New: a page built from another instance could miss options
// given only to Main, such as the description and the version.
func (c *ManCmd) Run(g *Globals, kctx *kong.Context, vars kong.Vars) error {
	_, err := io.WriteString(g.stdout, manPage(kctx.Model, vars["version"]))
	return err
}

// manPage renders app as a section 1 manual page. version is what
// --version prints.
func manPage(app *kong.Application, version string) string {
	m := &roff{}
	name := app.Name
	// The footer names the release only: the revision and Go version that
	// --version adds for bug reports do not fit there.
	source, _, _ := strings.Cut(version, ",")
	if !strings.HasPrefix(source, name+" ") {
		source = strings.TrimSpace(name + " " + source)
	}
	// No date: the page is built inside Nix builds, where any date would be
	// either wrong or a source of irreproducibility.
	m.macro("TH", strings.ToUpper(name), "1", "", source, "User Commands")
	// Hyphenation would split option names and commands that readers copy
	// from the page. HY is what the man macros restore it to (after .YS,
	// for one), so it is set to none as well as switched off here.
	m.raw(".nr HY 0")
	m.raw(".nh")
	m.raw(".ad l")

	m.macro("SH", "NAME")
	m.text(name + " - " + nameLine(app.Help))

	m.synopsis(app)
	m.macro("SH", "DESCRIPTION")
	m.paragraphs(app.Help)
	m.paragraphs(app.Detail)
	m.paragraphs(`The hive is read from the directory given with -c/--config (or
NIX_HIVE_CONFIG), by default the current directory: its flake.nix (the
flake's hive output) if there is one, else its hive.nix. -c may also name
the file itself.

Commands that take targets select instances with globs on instance names
(www-*), or with @ and a glob on their tags (@web). Instances named
explicitly come first, in the order given; duplicates collapse. A pattern
that matches nothing is an error, so a typo never silently shrinks a
deploy. Without targets, where they are optional, every instance is meant.`)

	m.commands(app)
	m.macro("SH", "GLOBAL OPTIONS")
	m.text("These options are accepted before or after the command.")
	m.flags(visibleFlags(app.Node))

	m.reference(app)
	m.macro("SH", "SEE ALSO")
	m.raw(`\fBnix\fR(1), \fBnix\-build\fR(1), \fBnix\-copy\-closure\fR(1), \fBssh\fR(1), \fBssh_config\fR(5), \fBnixos\-rebuild\fR(8)`)
	return m.String()
}

// synopsis is the SYNOPSIS section: the general form, then each command's.
func (m *roff) synopsis(app *kong.Application) {
	name := app.Name
	m.macro("SH", "SYNOPSIS")
	m.macro("SY", name)
	m.raw(optional("global options"))
	m.raw(`\fIcommand\fR`)
	m.raw(optional("options"))
	m.raw(optional("arguments"))
	m.macro("YS")
	for _, cmd := range commands(app.Node) {
		if !cmd.Leaf() {
			continue // a group (keys): its commands are listed
		}
		m.macro("SY", name)
		m.raw(`\fB` + escape(cmd.Path()) + `\fR`)
		if len(commandFlags(cmd)) > 0 {
			m.raw(optional("options"))
		}
		for _, p := range cmd.Positional {
			m.raw(positionalSynopsis(p))
		}
		m.macro("YS")
	}

}

// commands is the COMMANDS section: each command's help, arguments and
// options.
func (m *roff) commands(app *kong.Application) {
	name := app.Name
	m.macro("SH", "COMMANDS")
	for _, cmd := range commands(app.Node) {
		m.macro("SS", name+" "+cmd.Path())
		m.paragraphs(cmd.Help)
		m.paragraphs(cmd.Detail)
		if len(cmd.Positional) > 0 {
			m.macro("PP")
			m.text("Arguments:")
			for _, p := range cmd.Positional {
				m.macro("TP")
				m.raw(positionalSynopsis(p))
				m.value(p)
			}
		}
		if !cmd.Leaf() {
			var subs []string
			for _, c := range cmd.Children {
				if !c.Hidden {
					subs = append(subs, `\fB`+escape(c.Name)+`\fR`)
				}
			}
			m.macro("PP")
			m.raw("Commands: " + strings.Join(subs, ", ") + ".")
			continue
		}
		if flags := commandFlags(cmd); len(flags) > 0 {
			m.macro("PP")
			m.text("Options:")
			m.flags(flags)
		}
	}

}

// reference is the EXIT STATUS, ENVIRONMENT and FILES sections.
func (m *roff) reference(app *kong.Application) {
	m.macro("SH", "EXIT STATUS")
	for _, s := range []struct{ code, meaning string }{
		{"0", "Success."},
		{"1", "Failure: a host failed (deploy, keys upload, rollback), a command failed on an instance (run), an instance drifted from the hive (status), or something else went wrong (a build, reading the state)."},
		{"2", "Usage error: an unknown command or flag, a bad flag value, flags that contradict each other, no hive where -c points; or a mistake in the hive: it does not evaluate, it is invalid, or a target matches no instance."},
		{"130", "Interrupted (SIGINT or SIGTERM) before the command finished. A deploy records every host's state in hive.state first."},
		{"255", "ssh: the connection to the instance could not be made or was lost, as with OpenSSH. Otherwise ssh exits with the remote command's status."},
	} {
		m.macro("TP")
		m.raw(`\fB` + s.code + `\fR`)
		m.text(s.meaning)
	}

	m.macro("SH", "ENVIRONMENT")
	for _, f := range visibleFlags(app.Node) {
		for _, env := range f.Envs {
			m.macro("TP")
			m.raw(`\fB` + escape(env) + `\fR`)
			m.text("Default for --" + f.Name + ".")
		}
	}

	m.macro("SH", "FILES")
	for _, f := range []struct{ file, meaning string }{
		{"hive.nix", "The hive as a Nix expression: systems and instances (lib.mkHive's arguments). Found in the -c/--config directory."},
		{"flake.nix", "A flake whose hive output is the hive (made with nix-hive.lib.mkHive). Preferred over hive.nix in the same directory."},
		{"hive.star", "Rollout policy in Starlark (waves, checks, when to stop), beside the hive; --policy names another file."},
		{"hive.state", "JSON cache beside the hive (or --state): each system's last build and each instance's last deploy outcome. Merged under a lock, replaced atomically; deleting it loses only time."},
		{".nix-hive/", "Beside the state file: GC roots of built systems (gcroots/), host keys accepted with --accept-new-host-keys (known_hosts), and what ssh-config --write writes (ssh_config, ssh_known_hosts)."},
	} {
		m.macro("TP")
		m.raw(`\fI` + escape(f.file) + `\fR`)
		m.text(f.meaning)
	}

}

// nameLine is the NAME section's description: by convention lower case
// and without a final period ("nix-hive - deploy ...").
func nameLine(help string) string {
	s := strings.TrimSuffix(strings.TrimSpace(strings.SplitN(help, "\n\n", 2)[0]), ".")
	r := []rune(s)
	// Keep acronyms ("NixOS ...") as they are.
	if len(r) > 1 && unicode.IsUpper(r[0]) && unicode.IsLower(r[1]) {
		r[0] = unicode.ToLower(r[0])
	}
	return string(r)
}

// commands are the commands under n, depth first in the order declared.
func commands(n *kong.Node) []*kong.Node {
	var out []*kong.Node
	for _, c := range n.Children {
		if c.Hidden || c.Type != kong.CommandNode {
			continue
		}
		out = append(out, c)
		out = append(out, commands(c)...)
	}
	return out
}

// commandFlags are the flags cmd takes besides the global ones: its own
// and those of the groups it is in (keys), which kong parses for it.
func commandFlags(cmd *kong.Node) []*kong.Flag {
	var flags []*kong.Flag
	for n := cmd; n != nil && n.Type != kong.ApplicationNode; n = n.Parent {
		flags = append(visibleFlags(n), flags...)
	}
	return flags
}

func visibleFlags(n *kong.Node) []*kong.Flag {
	var out []*kong.Flag
	for _, f := range n.Flags {
		if !f.Hidden {
			out = append(out, f)
		}
	}
	return out
}

func optional(s string) string { return `[\fI` + escape(s) + `\fR]` }

func positionalSynopsis(p *kong.Positional) string {
	s := `\fI` + escape(p.Name) + `\fR`
	if p.IsCumulative() {
		s += `\~.\|.\|.`
	}
	if p.PassthroughMode != kong.PassThroughModeNone {
		s = `[\fB\-\-\fR]\~` + s
	}
	if !p.Required {
		s = "[" + s + "]"
	}
	return s
}

// value writes a flag's or argument's help and what kong knows beyond
// it: the accepted values, the default and the environment variables,
// each on a line of its own.
func (m *roff) value(v *kong.Value) {
	m.text(v.Help)
	if v.Enum != "" {
		vals := v.EnumSlice()
		listed := true
		for _, e := range vals {
			listed = listed && strings.Contains(v.Help, e)
		}
		if !listed {
			m.macro("br")
			m.text("Values: " + strings.Join(vals, ", "))
		}
	}
	if v.HasDefault && v.Default != "" {
		m.macro("br")
		m.raw(`Default: \fB` + escape(v.Default) + `\fR`)
	}
	if v.Flag != nil && len(v.Flag.Envs) > 0 {
		m.macro("br")
		m.raw(`Environment: \fB` + escape(strings.Join(v.Flag.Envs, ", ")) + `\fR`)
	}
}

// flagLabel is how a flag is written: -c, --config=PATH.
func flagLabel(f *kong.Flag) string {
	name := f.Name
	switch neg := f.Tag.Negatable; {
	case neg == "_": // kong's marker for the default negation, --no-NAME
		name = "[no-]" + name
	case neg != "":
		name += "/--" + neg
	}
	s := `\fB\-\-` + escape(name) + `\fR`
	if f.Short != 0 {
		s = `\fB\-` + escape(string(f.Short)) + `\fR, ` + s
	}
	if !f.IsBool() && !f.IsCounter() {
		s += `=\fI` + escape(placeholder(f)) + `\fR`
	}
	return s
}

// placeholder names a flag's value by what it is (PATH, DURATION, N)
// where kong's help would show the default, which the man page gives in
// the description instead.
func placeholder(f *kong.Flag) string {
	if _, ok := f.Mapper.(kong.PlaceHolderProvider); ok || f.PlaceHolder != "" {
		return f.FormatPlaceHolder()
	}
	t := f.Target.Type()
	switch {
	case slices.Contains([]string{"path", "existingfile", "existingdir", "filecontent"}, f.Tag.Type):
		return "PATH"
	case t == reflect.TypeOf(time.Duration(0)):
		return "DURATION"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "N"
	}
	return strings.ToUpper(f.Name)
}

// roff accumulates a page. Text goes through escape; raw is for lines
// that already are roff.
type roff struct{ strings.Builder }

// macro writes a request; arguments are quoted so that spaces and empty
// arguments survive.
func (m *roff) macro(name string, args ...string) {
	m.WriteString("." + name)
	for _, a := range args {
		m.WriteString(` "` + strings.ReplaceAll(escape(a), `"`, `\(dq`) + `"`)
	}
	m.WriteString("\n")
}

func (m *roff) raw(line string) { m.WriteString(line + "\n") }

// text writes s as filled text.
func (m *roff) text(s string) {
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		// A leading space breaks the line in roff, an empty line makes
		// a blank one; neither is wanted inside filled text.
		if line = strings.TrimSpace(line); line != "" {
			m.raw(escapeLine(line))
		}
	}
}

// paragraphs writes help text: paragraphs separated by blank lines, and
// indented lines (examples) kept as they are, unfilled, in an indented
// block.
func (m *roff) paragraphs(s string) {
	s = strings.TrimSpace(s)
	if s == "" {
		return
	}
	for _, para := range strings.Split(s, "\n\n") {
		m.macro("PP")
		lines := strings.Split(para, "\n")
		for i := 0; i < len(lines); {
			if !indented(lines[i]) {
				m.text(lines[i])
				i++
				continue
			}
			j := i
			for j < len(lines) && indented(lines[j]) {
				j++
			}
			m.example(lines[i:j])
			i = j
		}
	}
}

func indented(line string) bool { return strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") }

func (m *roff) example(lines []string) {
	indent := -1
	for _, l := range lines {
		n := len(l) - len(strings.TrimLeft(l, " \t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	m.macro("RS", "4")
	m.macro("nf")
	for _, l := range lines {
		m.raw(escapeLine(l[indent:]))
	}
	m.macro("fi")
	m.macro("RE")
}

func (m *roff) flags(flags []*kong.Flag) {
	for _, f := range flags {
		m.macro("TP")
		m.raw(flagLabel(f))
		m.value(f.Value)
	}
}

// escapeLine escapes one line of text, also protecting a leading . that
// roff would take for a request (a leading ' is already \(aq).
func escapeLine(s string) string {
	s = escape(s)
	if strings.HasPrefix(s, ".") {
		s = `\&` + s
	}
	return s
}

// escaper maps characters roff would interpret, or render as typographic
// glyphs that break copying commands from the page, to their escapes.
var escaper = strings.NewReplacer(
	`\`, `\e`,
	`-`, `\-`,
	`'`, `\(aq`,
	"`", `\(ga`,
	`^`, `\(ha`,
	`~`, `\(ti`,
)

func escape(s string) string { return escaper.Replace(s) }
