package completion

import (
	"slices"
	"strings"

	"github.com/alecthomas/kong"
)

// node is a command as the completion scripts see it, taken from the
// kong model. Its fields and methods are what the templates use.
type node struct {
	Name     string // "" for the program itself
	Path     string // words from the program to here: "keys list"
	Help     string
	Children []*node
	Flags    []*flag // its own and its ancestors': kong takes them anywhere below
	Own      []*flag // declared here (fish conditions them on the path)
	Args     []arg
}

// flag is a flag and what its value completes to.
type flag struct {
	Long        string
	Short       string // "" or one letter
	Negation    string // "--no-x" for negatable booleans
	Help        string
	Value       bool     // takes a value
	Words       []string // the values it takes, when known
	List        bool     // a comma-separated list of words
	Files       bool     // a path
	Repeat      bool     // may be given more than once
	Placeholder string   // names the value in zsh's messages
}

// Kind is what a positional argument completes to.
type Kind int

const (
	Text      Kind = iota // nothing to offer (free text)
	Targets               // an instance or @tag
	Instance              // an instance
	Remote                // a local path or instance:path
	words                 // one of arg.Words
	targetSet             // instances or @tags, comma-separated
	rest                  // everything after it, flags too (a remote command)
)

// arg is a positional argument.
type arg struct {
	Name     string
	Kind     Kind
	Words    []string
	Many     bool // cumulative: it takes every word after it
	Optional bool
}

// tree is the command tree of the model below n.
func tree(n *kong.Node, opts Options) *node {
	root := build(n, nil, opts)
	root.Name = ""
	return root
}

func build(n *kong.Node, parent *node, opts Options) *node {
	c := &node{Name: n.Name, Help: firstSentence(n.Help)}
	if parent != nil {
		c.Path = strings.TrimSpace(parent.Path + " " + n.Name)
		c.Flags = slices.Clone(parent.Flags)
	}
	for _, f := range n.Flags {
		if f.Hidden {
			continue
		}
		cf := buildFlag(f, opts)
		c.Own = append(c.Own, cf)
		c.Flags = append(c.Flags, cf)
	}
	for _, p := range n.Positional {
		c.Args = append(c.Args, buildArg(p, opts))
	}
	for _, child := range n.Children {
		if child.Hidden || child.Type != kong.CommandNode {
			continue
		}
		c.Children = append(c.Children, build(child, c, opts))
	}
	return c
}

func buildFlag(f *kong.Flag, opts Options) *flag {
	cf := &flag{Long: f.Name, Help: firstSentence(f.Help), Placeholder: f.Name}
	if f.PlaceHolder != "" {
		cf.Placeholder = strings.ToLower(strings.ReplaceAll(f.PlaceHolder, ":", ""))
	}
	if f.Short != 0 {
		cf.Short = string(f.Short)
	}
	if f.IsBool() || f.IsCounter() {
		switch neg := f.Tag.Negatable; neg {
		case "":
		case "_": // kong's mark for the default, --no-<flag>
			cf.Negation = "--no-" + f.Name
		default:
			cf.Negation = "--" + neg
		}
		return cf
	}
	cf.Value = true
	cf.Repeat = f.IsCumulative()
	switch {
	case f.Enum != "":
		cf.Words = f.EnumSlice()
	case opts.Words[f.Name] != nil:
		cf.Words = opts.Words[f.Name]
	}
	cf.List = cf.Words != nil && f.IsSlice() && f.Tag.Sep == ','
	cf.Files = f.Tag.Type == "path" || f.Tag.Type == "existingfile" || f.Tag.Type == "existingdir"
	return cf
}

func buildArg(p *kong.Positional, opts Options) arg {
	a := arg{Name: p.Name, Kind: opts.Args[p.Name], Many: p.IsCumulative(), Optional: !p.Required}
	switch {
	case p.Passthrough || p.PassthroughMode != kong.PassThroughModeNone:
		a.Kind = rest
	case p.Enum != "":
		a.Kind, a.Words = words, p.EnumSlice()
	case a.Kind == Targets && !a.Many:
		// one word naming several: run's "www-*,@db"
		a.Kind = targetSet
	}
	return a
}

// firstSentence keeps menus to one line: the rest is in --help.
func firstSentence(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if i := strings.Index(s, ". "); i >= 0 {
		s = s[:i+1]
	}
	return s
}

// all lists c and every command below it, parents first.
func (c *node) all() []*node {
	nodes := []*node{c}
	for _, child := range c.Children {
		nodes = append(nodes, child.all()...)
	}
	return nodes
}

// Spellings lists the words that spell the command's flags.
func (c *node) Spellings() []string {
	var w []string
	for _, f := range c.Flags {
		w = append(w, "--"+f.Long)
		if f.Negation != "" {
			w = append(w, f.Negation)
		}
		if f.Short != "" {
			w = append(w, "-"+f.Short)
		}
	}
	return w
}

// Valued lists the words that spell the command's flags that take a
// value in the next word.
func (c *node) Valued() []string {
	var w []string
	for _, f := range c.Flags {
		if !f.Value {
			continue
		}
		w = append(w, "--"+f.Long)
		if f.Short != "" {
			w = append(w, "-"+f.Short)
		}
	}
	return w
}

// ChildNames lists the names of the command's subcommands.
func (c *node) ChildNames() []string {
	var w []string
	for _, ch := range c.Children {
		w = append(w, ch.Name)
	}
	return w
}

// code is how the bash and fish scripts name an argument's kind; "..."
// marks one that takes every word after it.
func (a arg) code() string {
	var c string
	switch a.Kind {
	case words:
		c = "words:" + strings.Join(a.Words, ",")
	case Targets:
		c = "targets"
	case targetSet:
		c = "targetset"
	case Instance:
		c = "instance"
	case Remote:
		c = "remote"
	case rest:
		return "rest..."
	default:
		c = "none"
	}
	if a.Many {
		c += "..."
	}
	return c
}

// ArgCodes lists the codes of the command's positional arguments.
func (c *node) ArgCodes() []string {
	var codes []string
	for _, a := range c.Args {
		codes = append(codes, a.code())
	}
	return codes
}

// short is how the flag long is spelled short ("" if it is not).
func (c *node) short(long string) string {
	for _, f := range c.Flags {
		if f.Long == long {
			return f.Short
		}
	}
	return ""
}

// sq quotes s for bash and zsh: in single quotes, nothing is special but
// the quote itself.
func sq(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// fq quotes s for fish: in single quotes only \ and ' are special.
func fq(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}
