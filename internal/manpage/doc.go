// Package manpage renders a kong command model as a section 1 manual page
// in roff.
//
// The model gives the synopsis, every command with its help, arguments and
// options, and the environment variables; Page adds what the model does
// not know (exit statuses, files, related pages). The page renders with
// groff -ww without a warning, and text from the model comes out as
// written: nothing in it is taken for a request, an escape or a font.
//
// It owns the page's layout and roff escaping. It must not know nix-hive's
// commands: cli gives it the model and the Page.
package manpage
