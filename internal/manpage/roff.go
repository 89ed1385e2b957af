package manpage

import "strings"

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
