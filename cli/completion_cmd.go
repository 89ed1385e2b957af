package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
	"github.com/nix-hive/nix-hive/internal/completion"
	"github.com/nix-hive/nix-hive/nixcmd"
)

// CompletionCmd is `nix-hive completion SHELL`.
type CompletionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"bash, zsh or fish."`
	// Complete is how the generated scripts ask, while completing, for
	// what only the hive knows. It is their interface, not the user's,
	// hence hidden; the shell argument it comes with is ignored.
	Complete string `hidden:"" placeholder:"KIND" help:"Print the hive's names, one a line: targets (instances and @tags) or instances."`
}

func (c *CompletionCmd) Help() string {
	return `Prints a completion script for bash, zsh or fish. It completes commands,
flags and their values, and the instance names and @tags of the hive in the
current directory, or of the one -c/--config names on the command line: on
Tab the script asks nix-hive, which evaluates the hive (it never connects
to a host). Open a new shell to use a new script.

bash: for everyone, or for one user (with the bash-completion package), or
from ~/.bashrc:

    nix-hive completion bash > /etc/bash_completion.d/nix-hive
    nix-hive completion bash > ~/.local/share/bash-completion/completions/nix-hive
    source <(nix-hive completion bash)

zsh: as _nix-hive in a directory of $fpath, added in ~/.zshrc before
compinit runs (after an update, rm ~/.zcompdump):

    mkdir -p ~/.zfunc && nix-hive completion zsh > ~/.zfunc/_nix-hive
    fpath=(~/.zfunc $fpath)

or from ~/.zshrc, after compinit:

    source <(nix-hive completion zsh)

fish:

    nix-hive completion fish > ~/.config/fish/completions/nix-hive.fish`
}

func (c *CompletionCmd) Run(ctx context.Context, kctx *kong.Context, g *Globals) error {
	if c.Complete != "" {
		return c.names(ctx, g)
	}
	if err := completion.Write(g.stdout, c.Shell, kctx.Model.Node, completionOptions); err != nil {
		return fmt.Errorf("completion: %w", err)
	}
	return nil
}

// completionOptions is what the scripts need to know beyond the command
// model.
var completionOptions = completion.Options{
	// By the arguments' names that commands share: only the hive knows
	// these, so the scripts ask nix-hive for them while completing.
	Args: map[string]completion.Kind{
		"targets":  completion.Targets,
		"instance": completion.Instance,
		"src":      completion.Remote,
		"dst":      completion.Remote,
	},
	// --no checks its steps itself rather than with kong's enum (see
	// Steps.AfterApply).
	Words:  map[string][]string{"no": knownSteps},
	Config: "config",
}

// completionTimeout bounds the hive's evaluation under Tab: a shell that
// hangs is worse than one that completes no names.
const completionTimeout = 10 * time.Second

// names prints the hive's names the scripts ask for. It runs under the
// user's Tab, so it prints nothing else: without a hive, or with one that
// does not evaluate, there is nothing to complete, and an error would
// only be written over the prompt.
func (c *CompletionCmd) names(ctx context.Context, g *Globals) error {
	err := completion.Names(g.stdout, c.Complete, func() map[string][]string {
		src, err := eval.Locate(g.Config)
		if err != nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, completionTimeout)
		defer cancel()
		h, err := eval.Open(ctx, src, &nixcmd.Runner{}, nil)
		if err != nil {
			return nil
		}
		tags := make(map[string][]string, len(h.Inventory.Instances))
		for name, in := range h.Inventory.Instances {
			tags[name] = in.Tags
		}
		return tags
	})
	switch {
	case errors.Is(err, completion.ErrUnknownKind):
		return cmdline.UsageError{Err: err}
	case err != nil:
		return fmt.Errorf("completion: %w", err)
	}
	return nil
}
