package manpage

import (
	"io"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/alecthomas/kong"
)

// Page is what a manual page says beyond its command model.
type Page struct {
	// Version is what --version prints: the footer names its first
	// part, before any comma.
	Version string
	// Description follows the program's help and detail in the
	// DESCRIPTION section, written as help text is.
	Description string
	// ExitStatus lists the statuses (Term) and their meaning.
	ExitStatus []Entry
	// Files lists the files the program reads or writes.
	Files []Entry
	// SeeAlso names related pages, as "ssh_config(5)".
	SeeAlso []string
}

// Entry is a term and its description.
type Entry struct{ Term, Text string }

// Write writes app's page to w.
func Write(w io.Writer, app *kong.Application, p Page) error {
	m := &roff{}
	name := app.Name
	// The footer names the release only: the revision and Go version that
	// --version adds for bug reports do not fit there.
	source, _, _ := strings.Cut(p.Version, ",")
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
	m.paragraphs(p.Description)

	m.commands(app)
	m.macro("SH", "GLOBAL OPTIONS")
	m.text("These options are accepted before or after the command.")
	m.flags(visibleFlags(app.Node))

	m.reference(app, p)
	_, err := io.WriteString(w, m.String())
	return err
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

// reference is the EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO sections;
// those that would be empty are left out.
func (m *roff) reference(app *kong.Application, p Page) {
	if len(p.ExitStatus) > 0 {
		m.macro("SH", "EXIT STATUS")
		for _, s := range p.ExitStatus {
			m.macro("TP")
			m.raw(`\fB` + escape(s.Term) + `\fR`)
			m.text(s.Text)
		}
	}

	m.macro("SH", "ENVIRONMENT")
	for _, f := range visibleFlags(app.Node) {
		for _, env := range f.Envs {
			m.macro("TP")
			m.raw(`\fB` + escape(env) + `\fR`)
			m.text("Default for --" + f.Name + ".")
		}
	}

	if len(p.Files) > 0 {
		m.macro("SH", "FILES")
		for _, f := range p.Files {
			m.macro("TP")
			m.raw(`\fI` + escape(f.Term) + `\fR`)
			m.text(f.Text)
		}
	}

	if len(p.SeeAlso) > 0 {
		m.macro("SH", "SEE ALSO")
		var refs []string
		for _, ref := range p.SeeAlso {
			page, section, _ := strings.Cut(ref, "(")
			refs = append(refs, `\fB`+escape(page)+`\fR(`+escape(section))
		}
		m.raw(strings.Join(refs, ", "))
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

func (m *roff) flags(flags []*kong.Flag) {
	for _, f := range flags {
		m.macro("TP")
		m.raw(flagLabel(f))
		m.value(f.Value)
	}
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
