package completion

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/template"

	"github.com/alecthomas/kong"
)

// Options is what the kong model does not say: which arguments are the
// hive's names, and which flag names the hive.
type Options struct {
	// Args says, by the arguments' names that commands share, which
	// positional arguments complete to the hive's names.
	Args map[string]Kind
	// Words are the values of flags, by name, that take a fixed set but
	// check it themselves rather than with kong's enum.
	Words map[string][]string
	// Config is the long name of the flag that names the hive: the
	// scripts pass it on when they ask for names, so that they complete
	// that hive's.
	Config string
}

//go:embed bash.sh zsh.zsh fish.fish
var files embed.FS

var scripts = template.Must(template.New("").Funcs(template.FuncMap{
	"join":         strings.Join,
	"sq":           sq,
	"fq":           fq,
	"zshFunc":      zshFunc,
	"zshSpecs":     zshSpecs,
	"zshTitle":     zshTitle,
	"bashValues":   bashValues,
	"fishFlags":    fishFlags,
	"fishArgCodes": fishArgCodes,
}).ParseFS(files, "bash.sh", "zsh.zsh", "fish.fish"))

// script names each shell's template.
var script = map[string]string{"bash": "bash.sh", "zsh": "zsh.zsh", "fish": "fish.fish"}

// Write writes the completion script for shell (bash, zsh or fish) of the
// program whose command tree is app.
func Write(w io.Writer, shell string, app *kong.Node, opts Options) error {
	name, ok := script[shell]
	if !ok {
		return fmt.Errorf("no completion for shell %q (known: bash, zsh, fish)", shell)
	}
	root := tree(app, opts)
	var b bytes.Buffer
	if err := scripts.ExecuteTemplate(&b, name, struct {
		Nodes []*node // every command, parents first
		// the flag naming the hive, long and short ("" if it has none)
		Config, ConfigShort string
	}{root.all(), opts.Config, root.short(opts.Config)}); err != nil {
		return fmt.Errorf("%s completion: %w", shell, err)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// ErrUnknownKind is Names' answer to a kind the scripts never ask for.
var ErrUnknownKind = errors.New("unknown kind (known: targets, instances)")

// Names writes what the scripts ask for with --complete=KIND, one a line:
// for "instances" the names of the instances, for "targets" their @tags
// too. instances, called only for a kind Names knows, maps each instance
// to its tags; nil (no hive, or one that does not evaluate) writes
// nothing, since whatever is written lands on the user's prompt.
func Names(w io.Writer, kind string, instances func() map[string][]string) error {
	var tags bool
	switch kind {
	case "targets":
		tags = true
	case "instances":
	default:
		return fmt.Errorf("--complete %s: %w", kind, ErrUnknownKind)
	}
	inv := instances()
	var out strings.Builder
	seen := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(inv)) {
		out.WriteString(name + "\n")
		for _, t := range inv[name] {
			seen[t] = true
		}
	}
	if tags {
		for _, t := range slices.Sorted(maps.Keys(seen)) {
			out.WriteString("@" + t + "\n")
		}
	}
	_, err := io.WriteString(w, out.String())
	return err
}
