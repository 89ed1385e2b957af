package cli

import (
	"github.com/alecthomas/kong"

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
	ExitStatus: []manpage.Entry{
		{Term: "0", Text: "Success."},
		{Term: "1", Text: "Failure: a host failed (deploy, keys upload, rollback), a command failed on an instance (run), an instance drifted from the hive (status), or something else went wrong (a build, reading the state)."},
		{Term: "2", Text: "Usage error: an unknown command or flag, a bad flag value, flags that contradict each other, no hive where -c points; or a mistake in the hive: it does not evaluate, it is invalid, or a target matches no instance."},
		{Term: "130", Text: "Interrupted (SIGINT or SIGTERM) before the command finished. A deploy records every host's state in hive.state first."},
		{Term: "255", Text: "ssh: the connection to the instance could not be made or was lost, as with OpenSSH. Otherwise ssh exits with the remote command's status."},
	},
	Files: []manpage.Entry{
		{Term: "hive.nix", Text: "The hive as a Nix expression: systems and instances (lib.mkHive's arguments). Found in the -c/--config directory."},
		{Term: "flake.nix", Text: "A flake whose hive output is the hive (made with nix-hive.lib.mkHive). Preferred over hive.nix in the same directory."},
		{Term: "hive.star", Text: "Rollout policy in Starlark (waves, checks, when to stop), beside the hive; --policy names another file."},
		{Term: "hive.state", Text: "JSON cache beside the hive (or --state): each system's last build and each instance's last deploy outcome. Merged under a lock, replaced atomically; deleting it loses only time."},
		{Term: ".nix-hive/", Text: "Beside the state file: GC roots of built systems (gcroots/), host keys accepted with --accept-new-host-keys (known_hosts), and what ssh-config --write writes (ssh_config, ssh_known_hosts)."},
	},
	SeeAlso: []string{"nix(1)", "nix-build(1)", "nix-copy-closure(1)", "ssh(1)", "ssh_config(5)", "nixos-rebuild(8)"},
}
