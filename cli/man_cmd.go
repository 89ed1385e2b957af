package cli

import (
	"strconv"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/internal/manpage"
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
	page := manPage
	page.Version = vars["version"]
	return manpage.Write(g.stdout, kctx.Model, page)
}

// manPage is what the page says beyond the command model.
var manPage = manpage.Page{
	Description: `The hive is read from the directory given with -c/--config (or
NIX_HIVE_CONFIG), by default the current directory: its flake.nix (the
flake's hive output) if there is one, else its hive.nix. -c may also name
the file itself.

Commands that take targets select instances with globs on instance names
(www-*), or with @ and a glob on their tags (@web). Instances named
explicitly come first, in the order given; duplicates collapse. A pattern
that matches nothing is an error, so a typo never silently shrinks a
deploy. Without targets, where they are optional, every instance is meant.`,
	ExitStatus: exitStatuses(),
	Files: []manpage.Entry{
		{Term: "hive.nix", Text: "The hive as a Nix expression: systems and instances (lib.mkHive's arguments). Found in the -c/--config directory."},
		{Term: "flake.nix", Text: "A flake whose hive output is the hive (made with nix-hive.lib.mkHive). Preferred over hive.nix in the same directory."},
		{Term: "hive.star", Text: "Rollout policy in Starlark (waves, checks, when to stop), beside the hive; --policy names another file."},
		{Term: "hive.state", Text: "JSON cache beside the hive (or --state): each system's last build and each instance's last deploy outcome. Merged under a lock, replaced atomically; deleting it loses only time."},
		{Term: ".nix-hive/", Text: "Beside the state file: GC roots of built systems (gcroots/), host keys accepted with --accept-new-host-keys (known_hosts), and what ssh-config --write writes (ssh_config, ssh_known_hosts)."},
	},
	SeeAlso: []string{"nix(1)", "nix-build(1)", "nix-copy-closure(1)", "ssh(1)", "ssh_config(5)", "nixos-rebuild(8)"},
}

// exitStatuses is cmdline.Contract as the page's entries: the one
// statement of what each status means.
func exitStatuses() []manpage.Entry {
	var e []manpage.Entry
	for _, c := range cmdline.Contract {
		e = append(e, manpage.Entry{Term: strconv.Itoa(c.Code), Text: c.Meaning + "."})
	}
	return e
}
