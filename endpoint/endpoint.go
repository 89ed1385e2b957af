package endpoint

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

var (
	// nameRE: what the README documents for instance names. "/" groups
	// instances (rack-1/web); ":" (scp's instance:path), "@" (tags), ","
	// (several patterns) and glob characters have meaning on the command
	// line and are left out.
	nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+/-]*$`)
	// labelRE is one label of a DNS name. Underscores are not valid in
	// host names (RFC 1123) but are common in internal DNS, and harmless.
	labelRE = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$`)
	// userRE is POSIX's portable login name (letters, digits, . _ -, not
	// starting with - or .), as useradd and NixOS accept.
	userRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)
	// tagRE admits imported labels such as env=prod or team:web.
	tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+/:=-]*$`)
	// zoneRE is an IPv6 zone (an interface name).
	zoneRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

const (
	maxName = 253 // a DNS name's length: instance names are hosts by default
	maxUser = 32  // useradd's limit
	maxTag  = 128
)

// CheckName checks an instance name (also what jump and store name).
func CheckName(s string) error {
	if len(s) > maxName || !nameRE.MatchString(s) {
		return fmt.Errorf("is not a valid instance name: use letters, digits and _ . + - /, starting with a letter, digit or _ (at most %d characters)", maxName)
	}
	return nil
}

// CheckHost checks an address: a DNS name, an IPv4 address, or an IPv6
// address (in brackets or not).
func CheckHost(s string) error {
	if strings.HasPrefix(s, "[") || strings.Contains(s, ":") {
		if ip := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"); strings.HasPrefix(s, "[") == strings.HasSuffix(s, "]") {
			if a, err := netip.ParseAddr(ip); err == nil && a.Is6() && (a.Zone() == "" || zoneRE.MatchString(a.Zone())) {
				return nil
			}
		}
		return errors.New("is not an IPv6 address (write one as [2001:db8::1])")
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	name := strings.TrimSuffix(s, ".")
	labels := strings.Split(name, ".")
	ok := name != "" && len(name) <= 253
	for _, l := range labels {
		ok = ok && len(l) <= 63 && labelRE.MatchString(l)
	}
	// A name whose last label is all digits is an IPv4 address gone
	// wrong (resolvers would read 10.1.2 as 10.1.0.2), never a DNS name.
	if ok && strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return errors.New("is not a valid IPv4 address")
	}
	if !ok {
		return errors.New("is not a DNS name, an IPv4 address or an IPv6 address: a DNS name is labels of letters, digits, - and _, separated by dots")
	}
	return nil
}

// HostName is the address as a resolver and OpenSSH's HostName want it:
// an IPv6 address without its brackets.
func HostName(s string) string {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		return s[1 : len(s)-1]
	}
	return s
}

// CheckUser checks a login name.
func CheckUser(s string) error {
	if len(s) > maxUser || !userRE.MatchString(s) {
		return fmt.Errorf("is not a POSIX login name: use letters, digits and _ . -, starting with a letter or _ (at most %d characters)", maxUser)
	}
	return nil
}

// CheckSpecialisation checks the name of a system's specialisation: a
// directory name under its toplevel's specialisation/, and an argument
// of the host's activation job.
func CheckSpecialisation(s string) error { return checkPlain("a specialisation name", s) }

// checkPlain checks a name that is a file name on a host or here, and a
// word of command lines: specialisations, systems, profiles.
func checkPlain(what, s string) error {
	if len(s) > maxTag || !specialisationRE.MatchString(s) {
		return fmt.Errorf("is not %s: use letters, digits and _ . + -, starting with a letter, digit or _ (at most %d characters)", what, maxTag)
	}
	return nil
}

var specialisationRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)

// CheckSystem checks a system's name: a file name of its GC root beside
// hive.state, and a word of commands that name it.
func CheckSystem(s string) error { return checkPlain("a valid system name", s) }

// CheckProfile checks the name of a profile beside the system one: a
// file name under /nix/var/nix/profiles/per-user/USER, and a word of the
// host's activation job.
func CheckProfile(s string) error { return checkPlain("a profile name", s) }

// CheckActivate checks a profile's activation command: a relative path
// inside its package, which root's job runs as the profile's user.
func CheckActivate(s string) error {
	parts := strings.Split(s, "/")
	ok := len(s) <= 255
	for _, p := range parts {
		ok = ok && activatePartRE.MatchString(p) && p != "." && p != ".."
	}
	if !ok {
		return errors.New("is not a command inside the profile: a relative path of letters, digits and _ . + - such as activate or bin/activate, with no . or .. parts")
	}
	return nil
}

var activatePartRE = regexp.MustCompile(`^[A-Za-z0-9_.+-]+$`)

// CheckTag checks a tag.
func CheckTag(s string) error {
	if len(s) > maxTag || !tagRE.MatchString(s) {
		return fmt.Errorf("is not a valid tag: use letters, digits and _ . + - / : =, starting with a letter, digit or _ (at most %d characters)", maxTag)
	}
	return nil
}
