package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/nix-hive/nix-hive/eval"
	"github.com/nix-hive/nix-hive/internal/cmdline"
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
	root := completionTree(kctx.Model.Node)
	var script string
	switch c.Shell {
	case "bash":
		script = bashCompletion(root)
	case "zsh":
		script = zshCompletion(root)
	case "fish":
		script = fishCompletion(root)
	}
	if _, err := io.WriteString(g.stdout, script); err != nil {
		return fmt.Errorf("completion: %w", err)
	}
	return nil
}

// completionTimeout bounds the hive's evaluation under Tab: a shell that
// hangs is worse than one that completes no names.
const completionTimeout = 10 * time.Second

// names prints the hive's instance names, and for targets its tags, one a
// line. It runs under the user's Tab, so it prints nothing else: without a
// hive, or with one that does not evaluate, there is nothing to complete,
// and an error would only be written over the prompt.
func (c *CompletionCmd) names(ctx context.Context, g *Globals) error {
	var tags bool
	switch c.Complete {
	case "targets":
		tags = true
	case "instances":
	default:
		return cmdline.UsageError{Err: fmt.Errorf("--complete %s: unknown kind (known: targets, instances)", c.Complete)}
	}
	src, err := eval.Locate(g.Config)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	h, err := eval.Open(ctx, src, &nixcmd.Runner{})
	if err != nil {
		return nil
	}
	var out strings.Builder
	seen := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(h.Inventory.Instances)) {
		out.WriteString(name + "\n")
		for _, t := range h.Inventory.Instances[name].Tags {
			seen[t] = true
		}
	}
	if tags {
		for _, t := range slices.Sorted(maps.Keys(seen)) {
			out.WriteString("@" + t + "\n")
		}
	}
	if _, err := io.WriteString(g.stdout, out.String()); err != nil {
		return fmt.Errorf("completion: %w", err)
	}
	return nil
}

// compNode is a command as the completion scripts see it, taken from the
// kong model so that a new command, flag or enum value completes without
// anyone remembering to tell the scripts.
type compNode struct {
	name     string // "" for the program itself
	path     string // words from the program to here: "keys list"
	help     string
	children []*compNode
	flags    []*compFlag // its own and its ancestors': kong takes them anywhere below
	own      []*compFlag // declared here (fish conditions them on the path)
	args     []compArg
}

// compFlag is a flag and what its value completes to.
type compFlag struct {
	long      string
	short     string // "" or one letter
	negation  string // "--no-x" for negatable booleans
	help      string
	value     bool     // takes a value
	words     []string // the values it takes, when known
	list      bool     // a comma-separated list of words
	files     bool     // a path
	repeat    bool     // may be given more than once
	placehold string   // names the value in zsh's messages
}

// argKind is what a positional argument completes to.
type argKind int

const (
	argNone      argKind = iota // nothing to offer (free text)
	argWords                    // one of compArg.words
	argTargets                  // an instance or @tag
	argTargetSet                // instances or @tags, comma-separated
	argInstance                 // an instance
	argRemote                   // a local path or instance:path
	argRest                     // everything after it, flags too (a remote command)
)

// compArg is a positional argument.
type compArg struct {
	name     string
	kind     argKind
	words    []string
	many     bool // cumulative: it takes every word after it
	optional bool
}

// positionalKinds says, by the arguments' names that commands share, which
// positional arguments are the hive's names: only the hive knows them, so
// the scripts ask nix-hive for them while completing.
var positionalKinds = map[string]argKind{
	"targets":  argTargets,
	"instance": argInstance,
	"src":      argRemote,
	"dst":      argRemote,
}

// checkedFlagWords are the values of flags that take a fixed set but
// check it themselves rather than with kong's enum (see Globals.validate).
var checkedFlagWords = map[string][]string{
	"no": knownSteps,
}

func completionTree(n *kong.Node) *compNode {
	root := buildCompNode(n, nil)
	root.name = ""
	return root
}

func buildCompNode(n *kong.Node, parent *compNode) *compNode {
	c := &compNode{name: n.Name, help: firstSentence(n.Help)}
	if parent != nil {
		c.path = strings.TrimSpace(parent.path + " " + n.Name)
		c.flags = slices.Clone(parent.flags)
	}
	for _, f := range n.Flags {
		if f.Hidden {
			continue
		}
		cf := buildCompFlag(f)
		c.own = append(c.own, cf)
		c.flags = append(c.flags, cf)
	}
	for _, p := range n.Positional {
		c.args = append(c.args, buildCompArg(p))
	}
	for _, child := range n.Children {
		if child.Hidden || child.Type != kong.CommandNode {
			continue
		}
		c.children = append(c.children, buildCompNode(child, c))
	}
	return c
}

func buildCompFlag(f *kong.Flag) *compFlag {
	cf := &compFlag{long: f.Name, help: firstSentence(f.Help), placehold: f.Name}
	if f.PlaceHolder != "" {
		cf.placehold = strings.ToLower(strings.ReplaceAll(f.PlaceHolder, ":", ""))
	}
	if f.Short != 0 {
		cf.short = string(f.Short)
	}
	if f.IsBool() || f.IsCounter() {
		switch neg := f.Tag.Negatable; neg {
		case "":
		case "_": // kong's mark for the default, --no-<flag>
			cf.negation = "--no-" + f.Name
		default:
			cf.negation = "--" + neg
		}
		return cf
	}
	cf.value = true
	cf.repeat = f.IsCumulative()
	switch {
	case f.Enum != "":
		cf.words = f.EnumSlice()
	case checkedFlagWords[f.Name] != nil:
		cf.words = checkedFlagWords[f.Name]
	}
	cf.list = cf.words != nil && f.IsSlice() && f.Tag.Sep == ','
	cf.files = f.Tag.Type == "path" || f.Tag.Type == "existingfile" || f.Tag.Type == "existingdir"
	return cf
}

func buildCompArg(p *kong.Positional) compArg {
	a := compArg{name: p.Name, kind: positionalKinds[p.Name], many: p.IsCumulative(), optional: !p.Required}
	switch {
	case p.Passthrough || p.PassthroughMode != kong.PassThroughModeNone:
		a.kind = argRest
	case p.Enum != "":
		a.kind, a.words = argWords, p.EnumSlice()
	case a.kind == argTargets && !a.many:
		// one word naming several: run's "www-*,@db"
		a.kind = argTargetSet
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

// walk visits c and every command below it, parents first.
func (c *compNode) walk(f func(*compNode)) {
	f(c)
	for _, child := range c.children {
		child.walk(f)
	}
}

// spellings lists the words that spell the command's flags.
func (c *compNode) spellings() []string {
	var w []string
	for _, f := range c.flags {
		w = append(w, "--"+f.long)
		if f.negation != "" {
			w = append(w, f.negation)
		}
		if f.short != "" {
			w = append(w, "-"+f.short)
		}
	}
	return w
}

// valued lists the words that spell the command's flags that take a
// value in the next word.
func (c *compNode) valued() []string {
	var w []string
	for _, f := range c.flags {
		if !f.value {
			continue
		}
		w = append(w, "--"+f.long)
		if f.short != "" {
			w = append(w, "-"+f.short)
		}
	}
	return w
}

func (c *compNode) childNames() []string {
	var w []string
	for _, ch := range c.children {
		w = append(w, ch.name)
	}
	return w
}

// code is how the bash and fish scripts name an argument's kind; "..."
// marks one that takes every word after it.
func (a compArg) code() string {
	var c string
	switch a.kind {
	case argWords:
		c = "words:" + strings.Join(a.words, ",")
	case argTargets:
		c = "targets"
	case argTargetSet:
		c = "targetset"
	case argInstance:
		c = "instance"
	case argRemote:
		c = "remote"
	case argRest:
		return "rest..."
	default:
		c = "none"
	}
	if a.many {
		c += "..."
	}
	return c
}

func (c *compNode) argCodes() []string {
	var codes []string
	for _, a := range c.args {
		codes = append(codes, a.code())
	}
	return codes
}

// configFlag is the flag that names the hive: the scripts pass it on
// when they ask for names, so that they complete that hive's.
const configFlag = "config"

// configShort is how configFlag is spelled short ("" if it is not).
func (c *compNode) configShort() string {
	for _, f := range c.flags {
		if f.long == configFlag {
			return f.short
		}
	}
	return ""
}

// sq quotes s for bash and zsh: in single quotes, nothing is special but
// the quote itself.
func sq(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// bashFlagPattern is the case pattern matching "PATH:FLAG" for a flag of
// the command at path: there and in the commands below it.
func bashFlagPattern(path, spelling string) string {
	if path == "" {
		return "*:" + spelling
	}
	return sq(path) + ":" + spelling + "|" + sq(path+" ") + "*:" + spelling
}

func bashCompletion(root *compNode) string {
	var b strings.Builder
	b.WriteString(bashHead)
	b.WriteString("\n# _nix_hive_node PATH: the subcommands, flags, flags taking a value and\n# positional arguments of the command at PATH.\n_nix_hive_node() {\n\tcase $1 in\n")
	root.walk(func(n *compNode) {
		fmt.Fprintf(&b, "\t%s)\n", sq(n.path))
		fmt.Fprintf(&b, "\t\t_nh_cmds=%s\n", sq(strings.Join(n.childNames(), " ")))
		fmt.Fprintf(&b, "\t\t_nh_flags=%s\n", sq(strings.Join(n.spellings(), " ")))
		fmt.Fprintf(&b, "\t\t_nh_valued=%s\n", sq("|"+strings.Join(n.valued(), "|")+"|"))
		fmt.Fprintf(&b, "\t\t_nh_args=%s\n", sq(strings.Join(n.argCodes(), " ")))
		b.WriteString("\t\t;;\n")
	})
	b.WriteString("\t*) return 1 ;;\n\tesac\n}\n")

	b.WriteString("\n# _nix_hive_value PATH FLAG VALUE: complete the value of FLAG at PATH.\n_nix_hive_value() {\n\tcase $1:$2 in\n")
	root.walk(func(n *compNode) {
		for _, f := range n.own {
			var action string
			switch {
			case f.list:
				action = "_nix_hive_list " + sq(strings.Join(f.words, " ")) + ` "$3"`
			case f.words != nil:
				action = "_nix_hive_words " + sq(strings.Join(f.words, " ")) + ` "$3"`
			case f.files:
				action = `_nix_hive_files "$3"`
			default:
				continue
			}
			pats := []string{bashFlagPattern(n.path, "--"+f.long)}
			if f.short != "" {
				pats = append(pats, bashFlagPattern(n.path, "-"+f.short))
			}
			fmt.Fprintf(&b, "\t%s) %s ;;\n", strings.Join(pats, "|"), action)
		}
	})
	b.WriteString("\tesac\n}\n")
	b.WriteString(strings.NewReplacer("@LONG@", configFlag, "@SHORT@", root.configShort()).Replace(bashTail))
	return b.String()
}

const bashHead = `# bash completion for nix-hive                             -*- shell-script -*-
#
# Generated by ` + "`nix-hive completion bash`" + ` from nix-hive's own commands and
# flags. Instance names and @tags come from nix-hive itself, which evaluates
# the hive in the current directory (or the one -c/--config names) on Tab.

# _nix_hive_split sets words and cword to the words up to the cursor as
# nix-hive will get them: split at blanks, quotes and backslashes removed.
# Not COMP_WORDS: bash splits those at each character of COMP_WORDBREAKS
# (@ : = among them), but @tag, @env=prod, instance:path and --flag=value
# are one word each to nix-hive.
# It sets keep to what bash keeps of the current word: the part before $1,
# the text bash replaces with a reply (readline's word, which starts at
# the last character of COMP_WORDBREAKS if that is @, else after it, or
# after an open quote). A caller that passes COMP_WORDS' word as $1 instead
# (bash-completion's _command_offset, for sudo nix-hive) passes the @ as a
# word of its own, and the : or = that readline does not replace.
_nix_hive_split() {
	local line=${COMP_LINE:0:COMP_POINT} text=$1 c q= w= i start=0 mark
	while [[ $text == [!@]* && $COMP_WORDBREAKS == *"${text:0:1}"* ]]; do
		text=${text:1}
	done
	mark=$((${#line} - ${#text}))
	((mark > 0)) && [[ $text != @* && ${line:mark-1:1} == @ ]] && ((mark -= 1))
	words=() keep=
	for ((i = 0; i < ${#line}; i++)); do
		((i == mark)) && keep=$w
		c=${line:i:1}
		if [[ $q == "'" ]]; then
			if [[ $c == "'" ]]; then q=; else w+=$c; fi
		elif [[ $q == '"' ]]; then
			if [[ $c == '"' ]]; then
				q=
			elif [[ $c == '\' && ${line:i+1:1} == [\$\"\\\` + "`" + `] ]]; then
				w+=${line:i+1:1}
				((i += 1))
			else
				w+=$c
			fi
		elif [[ $c == [$' \t\n'] ]]; then
			((i > start)) && words+=("$w")
			w= start=$((i + 1))
		elif [[ $c == [\"\'] ]]; then
			q=$c
		elif [[ $c == '\' ]]; then
			w+=${line:i+1:1}
			((i += 1))
		else
			w+=$c
		fi
	done
	((i == mark)) && keep=$w
	# bash's word begins before this one only if COMP_WORDBREAKS lacks
	# the blanks: keep nothing
	((mark < start)) && keep=
	words+=("$w")
	cword=$((${#words[@]} - 1))
}

# _nix_hive_offer CUR [PREFIX [SUFFIX]]: reply with each line of standard
# input that starts with CUR, between PREFIX and SUFFIX. Lines are compared
# and replied as they are: compgen -W would expand them.
_nix_hive_offer() {
	local w
	while IFS= read -r w; do
		[[ -n $w && $w == "$1"* ]] && COMPREPLY+=("${2-}$w${3-}")
	done
}

# _nix_hive_words WORDS CUR: the space-separated WORDS that start with CUR.
_nix_hive_words() {
	_nix_hive_offer "$2" <<<"${1// /$'\n'}"
}

# _nix_hive_list WORDS CUR: complete the last of CUR's comma-separated
# words with the WORDS not given yet.
_nix_hive_list() {
	local IFS=$' \t\n' last=${2##*,} w left=
	local pre=${2%"$last"}
	for w in $1; do
		[[ ,$pre == *,$w,* ]] || left+=$w$'\n'
	done
	_nix_hive_offer "$last" "$pre" <<<"$left"
}

_nix_hive_files() {
	compopt -o filenames 2>/dev/null
	local IFS=$'\n'
	COMPREPLY+=($(compgen -f -- "$1"))
}

# _nix_hive_names KIND: the hive's names, asked of nix-hive; nothing (and
# no error) without a hive.
_nix_hive_names() {
	local -a args=(completion bash --complete="$1")
	[[ -n $_nh_config ]] && args+=(--config="$_nh_config")
	"$_nh_prog" "${args[@]}" 2>/dev/null
}

# _nix_hive_arg N: set kind to what positional argument N is.
_nix_hive_arg() {
	local IFS=$' \t\n' i
	local -a a=($_nh_args)
	for ((i = 0; i < ${#a[@]}; i++)); do
		kind=${a[i]}
		if [[ $kind == *... ]]; then
			kind=${kind%...}
			return
		fi
		((i == $1)) && return
	done
	kind=none
}
`

// bashTail is the completion function; @LONG@ and @SHORT@ stand for the
// config flag's long and short name.
const bashTail = `
_nix_hive() {
	local cur words cword keep _nh_prog _nh_config=
	local _nh_cmds _nh_flags _nh_valued _nh_args
	COMPREPLY=()
	_nix_hive_split "${2-${COMP_WORDS[COMP_CWORD]}}"
	cur=${words[cword]} _nh_prog=${words[0]}
	[[ $_nh_prog == '~/'* ]] && _nh_prog=$HOME/${_nh_prog#'~/'}

	# Walk the words before the current one as nix-hive parses them:
	# subcommands, flags (and their values), positional arguments.
	local path= i w npos=0 expect= flags=1 kind
	_nix_hive_node ''
	for ((i = 1; i < cword; i++)); do
		w=${words[i]}
		if [[ -n $expect ]]; then
			[[ $expect == --@LONG@ || $expect == -@SHORT@ ]] && _nh_config=$w
			expect=
			continue
		fi
		if ((flags)); then
			case $w in
			--) flags=0; continue ;;
			--@LONG@=*) _nh_config=${w#*=}; continue ;;
			--*=*) continue ;;
			-?*)
				if [[ $_nh_valued == *"|$w|"* ]]; then
					expect=$w
				elif [[ -n '@SHORT@' && $w == -@SHORT@?* ]]; then
					_nh_config=${w#-@SHORT@}
				fi
				continue
				;;
			esac
		fi
		if ((npos == 0)) && [[ " $_nh_cmds " == *" $w "* ]]; then
			path=${path:+$path }$w
			_nix_hive_node "$path"
			continue
		fi
		_nix_hive_arg $npos
		# a command for the instances: nothing after it is nix-hive's
		[[ $kind == rest ]] && flags=0
		((npos++))
	done

	local IFS=$'\n'
	if [[ -n $expect ]]; then
		_nix_hive_value "$path" "$expect" "$cur"
	elif ((flags)) && [[ $cur == --*=* ]]; then
		local flag=${cur%%=*}
		if [[ $_nh_valued == *"|$flag|"* ]]; then
			_nix_hive_value "$path" "$flag" "${cur#*=}"
			((${#COMPREPLY[@]})) && COMPREPLY=("${COMPREPLY[@]/#/$flag=}")
		fi
	elif ((flags)) && [[ $cur == -* ]]; then
		_nix_hive_words "$_nh_flags" "$cur"
	elif ((npos == 0)) && [[ -n $_nh_cmds ]]; then
		_nix_hive_words "$_nh_cmds" "$cur"
	else
		_nix_hive_arg $npos
		case $kind in
		targets)
			_nix_hive_offer "$cur" <<<"$(_nix_hive_names targets)"
			;;
		instance)
			_nix_hive_offer "$cur" <<<"$(_nix_hive_names instances)"
			;;
		targetset)
			local last=${cur##*,}
			_nix_hive_offer "$last" "${cur%"$last"}" <<<"$(_nix_hive_names targets)"
			;;
		remote)
			# a path on an instance is not listed: that would connect
			[[ $cur == *:* ]] && return 0
			_nix_hive_offer "$cur" "" : <<<"$(_nix_hive_names instances)"
			if ((${#COMPREPLY[@]})); then
				# not -o filenames: it would quote the colons
				local f
				for f in $(compgen -f -- "$cur"); do
					[[ -d $f ]] && f+=/
					COMPREPLY+=("$f")
				done
				compopt -o nospace 2>/dev/null
			else
				_nix_hive_files "$cur"
			fi
			;;
		words:*)
			kind=${kind#words:}
			_nix_hive_words "${kind//,/ }" "$cur"
			;;
		esac
	fi
	# bash replaces its word only: reply with what goes there
	[[ -n $keep ]] && COMPREPLY=("${COMPREPLY[@]#"$keep"}")
	return 0
}

complete -F _nix_hive nix-hive
`

// zshFunc names the function completing the command at path.
func zshFunc(path string) string {
	if path == "" {
		return "_nix-hive_cmd"
	}
	return "_nix-hive_cmd_" + strings.ReplaceAll(path, " ", "_")
}

// zshExplain escapes text for the [explanation] of an _arguments spec.
func zshExplain(s string) string {
	return strings.NewReplacer(`\`, `\\`, "[", `\[`, "]", `\]`).Replace(s)
}

func zshFlagSpecs(f *compFlag) []string {
	spellings := []string{"--" + f.long}
	if f.short != "" {
		spellings = append(spellings, "-"+f.short)
	}
	if f.negation != "" {
		spellings = append(spellings, f.negation)
	}
	// a flag given once is not offered again, nor its other spellings
	excl := "(" + strings.Join(spellings, " ") + ")"
	if f.repeat {
		excl = "*"
	}
	explain := "[" + zshExplain(f.help) + "]"
	action := ""
	if f.value {
		act := " "
		switch {
		case f.list:
			act = "_values -s , " + f.placehold + " " + strings.Join(f.words, " ")
		case f.words != nil:
			act = "(" + strings.Join(f.words, " ") + ")"
		case f.files:
			act = "_files"
		}
		action = ":" + f.placehold + ":" + act
	}
	var specs []string
	for _, s := range spellings {
		switch {
		case s == f.negation:
			specs = append(specs, sq(excl+s+explain))
		case !f.value:
			specs = append(specs, sq(excl+s+explain))
		case strings.HasPrefix(s, "--"):
			specs = append(specs, sq(excl+s+"="+explain+action))
		default:
			specs = append(specs, sq(excl+s+"+"+explain+action))
		}
	}
	return specs
}

func zshArgSpec(a compArg) string {
	act := " "
	switch a.kind {
	case argWords:
		act = "(" + strings.Join(a.words, " ") + ")"
	case argTargets:
		act = "_nix-hive_targets"
	case argTargetSet:
		act = "_sequence _nix-hive_targets"
	case argInstance:
		act = "_nix-hive_instances"
	case argRemote:
		act = "_nix-hive_remote"
	}
	switch {
	case a.kind == argRest:
		return sq("*::" + a.name + ": ")
	case a.many:
		return sq("*:" + a.name + ":" + act)
	case a.optional:
		return sq("::" + a.name + ":" + act)
	}
	return sq(":" + a.name + ":" + act)
}

func zshCompletion(root *compNode) string {
	var b strings.Builder
	b.WriteString(zshHead)
	long, short := "--"+configFlag, "-"+root.configShort()
	b.WriteString("\t\t--) break ;;\n")
	if short != "-" {
		fmt.Fprintf(&b, "\t\t%s | %s) config=$_nix_hive_line[i+1] ;;\n", long, short)
		fmt.Fprintf(&b, "\t\t%s?*) config=${w#%s} ;;\n", short, short)
	} else {
		fmt.Fprintf(&b, "\t\t%s) config=$_nix_hive_line[i+1] ;;\n", long)
	}
	fmt.Fprintf(&b, "\t\t%s=*) config=${w#*=} ;;\n", long)
	b.WriteString(zshNames)
	root.walk(func(n *compNode) {
		var specs []string
		for _, f := range n.flags {
			specs = append(specs, zshFlagSpecs(f)...)
		}
		fmt.Fprintf(&b, "\n%s() {\n", zshFunc(n.path))
		if len(n.children) == 0 {
			for _, a := range n.args {
				specs = append(specs, zshArgSpec(a))
			}
			b.WriteString("\t_arguments -s -S \\\n\t\t" + strings.Join(specs, " \\\n\t\t") + "\n}\n")
			return
		}
		// (-): once the subcommand is there, flags after it are the
		// subcommand's to parse, globals included, not this one's
		specs = append(specs, sq("(-): :->command"), sq("(-)*:: :->arg"))
		b.WriteString("\tlocal curcontext=$curcontext state state_descr line ret=1\n\tlocal -A opt_args\n")
		b.WriteString("\t_arguments -C -s -S \\\n\t\t" + strings.Join(specs, " \\\n\t\t") + " && ret=0\n")
		b.WriteString("\tcase $state in\n\tcommand)\n\t\tlocal -a commands\n\t\tcommands=(\n")
		for _, ch := range n.children {
			fmt.Fprintf(&b, "\t\t\t%s\n", sq(ch.name+":"+ch.help))
		}
		fmt.Fprintf(&b, "\t\t)\n\t\t_describe -t commands %s commands && ret=0\n\t\t;;\n", sq(strings.Join(strings.Fields("nix-hive "+n.path+" command"), " ")))
		b.WriteString("\targ)\n\t\tcurcontext=${curcontext%:*:*}:nix-hive-$line[1]:\n\t\tcase $line[1] in\n")
		for _, ch := range n.children {
			fmt.Fprintf(&b, "\t\t%s) %s && ret=0 ;;\n", sq(ch.name), zshFunc(ch.path))
		}
		b.WriteString("\t\tesac\n\t\t;;\n\tesac\n\treturn ret\n}\n")
	})
	b.WriteString(zshTail)
	return b.String()
}

const zshHead = `#compdef nix-hive
#
# zsh completion for nix-hive, generated by ` + "`nix-hive completion zsh`" + ` from
# nix-hive's own commands and flags. Instance names and @tags come from
# nix-hive itself, which evaluates the hive in the current directory (or
# the one -c/--config names) on Tab.

_nix-hive() {
	# _arguments narrows $words to a subcommand's own, but a -c/--config
	# before the subcommand still names the hive to ask for names.
	local -a _nix_hive_line
	_nix_hive_line=("${words[@]}")
	local _nix_hive_current=$CURRENT
	_nix-hive_cmd "$@"
}

# _nix-hive_names KIND: the hive's names, asked of nix-hive; nothing (and
# no error) without a hive.
_nix-hive_names() {
	local -a args
	local i w config prog=${(Q)_nix_hive_line[1]}
	args=(completion zsh --complete=$1)
	for ((i = 2; i < _nix_hive_current; i++)); do
		w=$_nix_hive_line[i]
		case $w in
`

const zshNames = `		esac
	done
	[[ -n $config ]] && args+=(--config=${(Q)config})
	${prog/#\~/$HOME} "${args[@]}" 2>/dev/null
}

_nix-hive_targets() {
	local -a names expl
	names=(${(f)"$(_nix-hive_names targets)"})
	_wanted targets expl 'instance or @tag' compadd "$@" -a names
}

_nix-hive_instances() {
	local -a names expl
	names=(${(f)"$(_nix-hive_names instances)"})
	_wanted instances expl instance compadd "$@" -a names
}

# _nix-hive_remote: a local path, or instance: (a path on an instance is
# not listed: that would connect).
_nix-hive_remote() {
	if compset -P '*:'; then
		_message 'path on the instance'
		return 1
	fi
	local -a names
	names=(${(f)"$(_nix-hive_names instances)"})
	_alternative 'instances:instance:compadd -S : -a names' 'files:file:_files'
}
`

const zshTail = `
if [[ $funcstack[1] == _nix-hive ]]; then
	_nix-hive "$@"
else
	compdef _nix-hive nix-hive
fi
`

// fq quotes s for fish: in single quotes only \ and ' are special.
func fq(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}

func fishCompletion(root *compNode) string {
	var b strings.Builder
	long, short := "--"+configFlag, root.configShort()
	spellings, attached := long, "false"
	if short != "" {
		spellings += " -" + short
		attached = "string match -q -- " + fq("-"+short+"?*") + " $t"
	}
	b.WriteString(strings.NewReplacer("@LONG@", long, "@SPELLINGS@", spellings, "@ATTACHED@", attached).Replace(fishHead))

	b.WriteString("\n# __nix_hive_children PATH: the subcommands of the command at PATH.\nfunction __nix_hive_children\n\tswitch \"$argv[1]\"\n")
	root.walk(func(n *compNode) {
		if len(n.children) > 0 {
			fmt.Fprintf(&b, "\t\tcase %s\n\t\t\tprintf '%%s\\n' %s\n", fq(n.path), strings.Join(n.childNames(), " "))
		}
	})
	b.WriteString("\tend\nend\n")

	b.WriteString("\n# __nix_hive_valued PATH FLAG: whether FLAG takes a value at PATH.\nfunction __nix_hive_valued\n\tswitch \"$argv[1]\"\n")
	root.walk(func(n *compNode) {
		if v := n.valued(); len(v) > 0 {
			fmt.Fprintf(&b, "\t\tcase %s\n\t\t\tcontains -- $argv[2] %s\n", fq(n.path), strings.Join(v, " "))
		}
	})
	b.WriteString("\t\tcase '*'\n\t\t\treturn 1\n\tend\nend\n")

	b.WriteString("\n# __nix_hive_argkind PATH N: what positional argument N at PATH is.\nfunction __nix_hive_argkind\n\tset -l kinds\n\tswitch \"$argv[1]\"\n")
	root.walk(func(n *compNode) {
		if len(n.args) > 0 {
			var codes []string
			for _, c := range n.argCodes() {
				codes = append(codes, fq(c))
			}
			fmt.Fprintf(&b, "\t\tcase %s\n\t\t\tset kinds %s\n", fq(n.path), strings.Join(codes, " "))
		}
	})
	b.WriteString("\tend\n" + fishArgKind)

	b.WriteString(fishArgs)
	b.WriteString("\ncomplete -c nix-hive -e\ncomplete -c nix-hive -f\n")
	fishCompletes(&b, root)
	b.WriteString("complete -c nix-hive -a '(__nix_hive_args)'\n")
	return b.String()
}

// fishCompletes writes the complete commands: each command's flags and
// subcommands.
func fishCompletes(b *strings.Builder, root *compNode) {
	root.walk(func(n *compNode) {
		for _, f := range n.own {
			line := "complete -c nix-hive -n " + fq("__nix_hive_flag_at "+fq(n.path))
			if f.short != "" {
				line += " -s " + f.short
			}
			line += " -l " + f.long
			switch {
			case !f.value:
			case f.list:
				line += " -x -a " + fq("(__nix_hive_list "+strings.Join(f.words, " ")+")")
			case f.words != nil:
				line += " -x -a " + fq(strings.Join(f.words, " "))
			case f.files:
				line += " -r -F"
			default:
				line += " -x"
			}
			b.WriteString(line + " -d " + fq(f.help) + "\n")
			if f.negation != "" {
				fmt.Fprintf(b, "complete -c nix-hive -n %s -l %s -d %s\n", fq("__nix_hive_flag_at "+fq(n.path)),
					strings.TrimPrefix(f.negation, "--"), fq(f.help))
			}
		}
		for _, ch := range n.children {
			fmt.Fprintf(b, "complete -c nix-hive -n %s -a %s -d %s\n", fq("__nix_hive_cmd_at "+fq(n.path)), fq(ch.name), fq(ch.help))
		}
	})
}

const fishHead = `# fish completion for nix-hive
#
# Generated by ` + "`nix-hive completion fish`" + ` from nix-hive's own commands and
# flags. Instance names and @tags come from nix-hive itself, which evaluates
# the hive in the current directory (or the one -c/--config names) on Tab.

# __nix_hive_parse walks the command line before the cursor as nix-hive
# parses it, and sets __nix_hive_path (the subcommand: "keys list"),
# __nix_hive_npos (positional arguments so far), __nix_hive_flags (0 once
# flags no longer count: after -- or in a command for the instances),
# __nix_hive_expect (a flag waiting for its value) and __nix_hive_config
# (the hive named with -c/--config).
function __nix_hive_parse
	set -l tokens (commandline -opc)
	set -g __nix_hive_prog $tokens[1]
	set -g __nix_hive_path ''
	set -g __nix_hive_npos 0
	set -g __nix_hive_flags 1
	set -g __nix_hive_expect ''
	set -g __nix_hive_config ''
	for t in $tokens[2..-1]
		if test -n "$__nix_hive_expect"
			contains -- $__nix_hive_expect @SPELLINGS@; and set __nix_hive_config $t
			set __nix_hive_expect ''
			continue
		end
		if test $__nix_hive_flags = 1
			switch $t
				case --
					set __nix_hive_flags 0
					continue
				case '@LONG@=*'
					set __nix_hive_config (string replace -- '@LONG@=' '' $t)
					continue
				case '--*=*'
					continue
				case '-*'
					if __nix_hive_valued "$__nix_hive_path" $t
						set __nix_hive_expect $t
					else if @ATTACHED@
						set __nix_hive_config (string sub -s 3 -- $t)
					end
					continue
			end
		end
		if test $__nix_hive_npos = 0; and contains -- $t (__nix_hive_children "$__nix_hive_path")
			set __nix_hive_path (string trim -- "$__nix_hive_path $t")
			continue
		end
		# a command for the instances: nothing after it is nix-hive's
		if test (__nix_hive_argkind "$__nix_hive_path" $__nix_hive_npos) = rest
			set __nix_hive_flags 0
		end
		set __nix_hive_npos (math $__nix_hive_npos + 1)
	end
end

# __nix_hive_flag_at PATH: whether the flags of the command at PATH apply:
# there and below it, while flags count.
function __nix_hive_flag_at
	__nix_hive_parse
	test $__nix_hive_flags = 1; or return
	test -z "$argv[1]"; or test "$__nix_hive_path" = "$argv[1]"; or string match -q -- "$argv[1] *" "$__nix_hive_path"
end

# __nix_hive_cmd_at PATH: whether a subcommand of PATH comes next.
function __nix_hive_cmd_at
	__nix_hive_parse
	test $__nix_hive_flags = 1 -a $__nix_hive_npos = 0 -a -z "$__nix_hive_expect" -a "$__nix_hive_path" = "$argv[1]"
end

# __nix_hive_names KIND: the hive's names, asked of nix-hive; nothing (and
# no error) without a hive.
function __nix_hive_names
	set -l args completion fish --complete=$argv[1]
	test -n "$__nix_hive_config"; and set -a args --config=$__nix_hive_config
	$__nix_hive_prog $args 2>/dev/null
end

# __nix_hive_token: the token at the cursor as nix-hive will get it, its
# quotes and backslashes removed (what completes here has none): fish
# matches what a function offers against that, not the token as typed.
function __nix_hive_token
	string replace -ra -- '[\'"\\\\]' '' (commandline -ct)
end

# __nix_hive_list WORD...: complete the last word of a comma-separated
# list with the WORDs not given yet.
function __nix_hive_list
	set -l tok (string replace -r -- '^--[^=]*=' '' (__nix_hive_token))
	set -l pre (string replace -r -- '[^,]*$' '' "$tok")
	set -l given (string split , -- "$pre")
	for w in $argv
		contains -- $w $given; or echo "$pre$w"
	end
end
`

const fishArgKind = `	set -l i 0
	for k in $kinds
		if string match -q -- '*...' $k
			string replace -- '...' '' $k
			return
		end
		if test $i = $argv[2]
			echo $k
			return
		end
		set i (math $i + 1)
	end
	echo none
end
`

const fishArgs = `
# __nix_hive_args: candidates for the positional argument at the cursor.
function __nix_hive_args
	__nix_hive_parse
	test -z "$__nix_hive_expect"; or return
	if test $__nix_hive_npos = 0
		set -l sub (__nix_hive_children "$__nix_hive_path")
		test (count $sub) = 0; or return
	end
	set -l tok (__nix_hive_token)
	set -l kind (__nix_hive_argkind "$__nix_hive_path" $__nix_hive_npos)
	switch $kind
		case targets
			__nix_hive_names targets
		case instance
			__nix_hive_names instances
		case targetset
			set -l pre (string replace -r -- '[^,]*$' '' "$tok")
			for n in (__nix_hive_names targets)
				echo "$pre$n"
			end
		case remote
			# a path on an instance is not listed: that would connect
			string match -q -- '*:*' "$tok"; and return
			for n in (__nix_hive_names instances)
				echo "$n:"
			end
			__fish_complete_path "$tok"
		case 'words:*'
			string split , -- (string replace -- 'words:' '' $kind)
	end
end
`
