package shell

import "strings"

// Quote makes s one word for a POSIX shell: unchanged when it only holds
// characters no shell treats specially, else in single quotes, where an
// embedded single quote is closed, backslash-escaped and reopened. The
// result is safe for sh, bash, dash and zsh, including as the first word of
// a command line.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	if isPlainWord(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// QuoteArgs quotes each argument with Quote and joins them with spaces,
// turning an argv into a command line that the remote shell splits back
// into exactly those arguments.
func QuoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

// isPlainWord leaves out "=" (a leading NAME=value word is an assignment),
// "~" (tilde expansion) and everything else with meaning to some shell.
func isPlainWord(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '_' || c == '-' || c == '.' || c == '/' || c == ':' || c == '@' || c == '%' || c == '+' || c == ',':
		default:
			return false
		}
	}
	return true
}
