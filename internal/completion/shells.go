package completion

import (
	"strings"
)

// What each shell's template needs beyond the model: lines built and
// quoted here, where Go's strings are easier to get right than the
// templates'.

// bashValues are the cases of bash.sh's _nix_hive_value: how the value
// of each flag that knows its values completes, where the flag applies.
func bashValues(nodes []*node) []string {
	var cases []string
	for _, n := range nodes {
		for _, f := range n.Own {
			var action string
			switch {
			case f.List:
				action = "_nix_hive_list " + sq(strings.Join(f.Words, " ")) + ` "$3"`
			case f.Words != nil:
				action = "_nix_hive_words " + sq(strings.Join(f.Words, " ")) + ` "$3"`
			case f.Files:
				action = `_nix_hive_files "$3"`
			default:
				continue
			}
			pats := []string{bashFlagPattern(n.Path, "--"+f.Long)}
			if f.Short != "" {
				pats = append(pats, bashFlagPattern(n.Path, "-"+f.Short))
			}
			cases = append(cases, strings.Join(pats, "|")+") "+action+" ;;")
		}
	}
	return cases
}

// bashFlagPattern is the case pattern matching "PATH:FLAG" for a flag of
// the command at path: there and in the commands below it.
func bashFlagPattern(path, spelling string) string {
	if path == "" {
		return "*:" + spelling
	}
	return sq(path) + ":" + spelling + "|" + sq(path+" ") + "*:" + spelling
}

// zshFunc names the function completing the command at path.
func zshFunc(path string) string {
	if path == "" {
		return "_nix-hive_cmd"
	}
	return "_nix-hive_cmd_" + strings.ReplaceAll(path, " ", "_")
}

// zshTitle is the quoted title of the menu of n's subcommands.
func zshTitle(n *node) string {
	return sq(strings.Join(strings.Fields("nix-hive "+n.Path+" command"), " "))
}

// zshExplain escapes text for the [explanation] of an _arguments spec.
func zshExplain(s string) string {
	return strings.NewReplacer(`\`, `\\`, "[", `\[`, "]", `\]`).Replace(s)
}

// zshSpecs are the _arguments specs of the command n: its flags, then its
// arguments, or for a command with subcommands the states that complete
// a subcommand and hand what follows to it.
func zshSpecs(n *node) []string {
	var specs []string
	for _, f := range n.Flags {
		specs = append(specs, zshFlagSpecs(f)...)
	}
	if len(n.Children) == 0 {
		for _, a := range n.Args {
			specs = append(specs, zshArgSpec(a))
		}
		return specs
	}
	// (-): once the subcommand is there, flags after it are the
	// subcommand's to parse, globals included, not this one's
	return append(specs, sq("(-): :->command"), sq("(-)*:: :->arg"))
}

func zshFlagSpecs(f *flag) []string {
	spellings := []string{"--" + f.Long}
	if f.Short != "" {
		spellings = append(spellings, "-"+f.Short)
	}
	if f.Negation != "" {
		spellings = append(spellings, f.Negation)
	}
	// a flag given once is not offered again, nor its other spellings
	excl := "(" + strings.Join(spellings, " ") + ")"
	if f.Repeat {
		excl = "*"
	}
	explain := "[" + zshExplain(f.Help) + "]"
	action := ""
	if f.Value {
		act := " "
		switch {
		case f.List:
			act = "_values -s , " + f.Placeholder + " " + strings.Join(f.Words, " ")
		case f.Words != nil:
			act = "(" + strings.Join(f.Words, " ") + ")"
		case f.Files:
			act = "_files"
		}
		action = ":" + f.Placeholder + ":" + act
	}
	var specs []string
	for _, s := range spellings {
		switch {
		case s == f.Negation:
			specs = append(specs, sq(excl+s+explain))
		case !f.Value:
			specs = append(specs, sq(excl+s+explain))
		case strings.HasPrefix(s, "--"):
			specs = append(specs, sq(excl+s+"="+explain+action))
		default:
			specs = append(specs, sq(excl+s+"+"+explain+action))
		}
	}
	return specs
}

func zshArgSpec(a arg) string {
	act := " "
	switch a.Kind {
	case words:
		act = "(" + strings.Join(a.Words, " ") + ")"
	case Targets:
		act = "_nix-hive_targets"
	case targetSet:
		act = "_sequence _nix-hive_targets"
	case Instance:
		act = "_nix-hive_instances"
	case Remote:
		act = "_nix-hive_remote"
	}
	switch {
	case a.Kind == rest:
		return sq("*::" + a.Name + ": ")
	case a.Many:
		return sq("*:" + a.Name + ":" + act)
	case a.Optional:
		return sq("::" + a.Name + ":" + act)
	}
	return sq(":" + a.Name + ":" + act)
}

// fishArgCodes are n's argument codes, quoted for fish.
func fishArgCodes(n *node) string {
	var codes []string
	for _, c := range n.ArgCodes() {
		codes = append(codes, fq(c))
	}
	return strings.Join(codes, " ")
}

// fishFlags are the complete commands for n: its own flags and its
// subcommands.
func fishFlags(n *node) []string {
	var lines []string
	at := " -n " + fq("__nix_hive_flag_at "+fq(n.Path))
	for _, f := range n.Own {
		line := "complete -c nix-hive" + at
		if f.Short != "" {
			line += " -s " + f.Short
		}
		line += " -l " + f.Long
		switch {
		case !f.Value:
		case f.List:
			line += " -x -a " + fq("(__nix_hive_list "+strings.Join(f.Words, " ")+")")
		case f.Words != nil:
			line += " -x -a " + fq(strings.Join(f.Words, " "))
		case f.Files:
			line += " -r -F"
		default:
			line += " -x"
		}
		lines = append(lines, line+" -d "+fq(f.Help))
		if f.Negation != "" {
			lines = append(lines, "complete -c nix-hive"+at+" -l "+strings.TrimPrefix(f.Negation, "--")+" -d "+fq(f.Help))
		}
	}
	for _, ch := range n.Children {
		lines = append(lines, "complete -c nix-hive -n "+fq("__nix_hive_cmd_at "+fq(n.Path))+" -a "+fq(ch.Name)+" -d "+fq(ch.Help))
	}
	return lines
}
