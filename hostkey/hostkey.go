package hostkey

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Sentinel errors; test with errors.Is. An Error always names the
// instance, the fingerprint and how to fix it.
var (
	// ErrMismatch means the host presented a key other than the pinned or
	// known one (or a revoked one). It is never accepted, not even with
	// Policy.Accept.
	ErrMismatch = errors.New("host key mismatch")
	// ErrUnknown means no pinned or known key exists for the host and
	// Policy.Accept is off.
	ErrUnknown = errors.New("host key unknown")
)

// Error is a refused host key. It matches ErrMismatch or ErrUnknown with
// errors.Is, and carries what a front end needs to offer pinning the key.
type Error struct {
	Instance string
	Addr     string
	// Got is the key the host presented.
	Got ssh.PublicKey
	// Want are the pinned or known keys; empty when the host is unknown.
	Want []string
	// Where says where each of Want came from ("hostKey" or file:line).
	Where   []string
	Revoked bool
	// Cert says why a host certificate was not accepted, when the host
	// presented one.
	Cert error
}

// Is makes errors.Is match the sentinel for the kind of refusal.
func (e *Error) Is(target error) bool {
	if len(e.Want) == 0 && !e.Revoked {
		return target == ErrUnknown
	}
	return target == ErrMismatch
}

func (e *Error) Error() string {
	got := keyTypeLabel(e.Got) + " " + ssh.FingerprintSHA256(e.Got)
	if e.Cert != nil {
		got += " (its host certificate was refused: " + e.Cert.Error() + ")"
	}
	switch {
	case e.Revoked:
		return fmt.Sprintf("host key for %s (%s) is revoked in %s: %s; refusing to connect", e.Instance, e.Addr, strings.Join(e.Where, ", "), got)
	case len(e.Want) == 0:
		return fmt.Sprintf("host key for %s (%s) is unknown: %s; pin it with hostKey = %q; in the instance, or pass --accept-new-host-keys",
			e.Instance, e.Addr, got, AuthorizedKey(e.Got))
	default:
		return fmt.Sprintf("host key for %s (%s) does not match: got %s, pinned/known: %s (%s); if the host was reinstalled, pin its new key with hostKey = %q; in the instance (and remove the old entry)",
			e.Instance, e.Addr, got, strings.Join(e.Want, ", "), strings.Join(e.Where, ", "), AuthorizedKey(e.Got))
	}
}

// AuthorizedKey formats a key as the hive's hostKey wants it
// ("ssh-ed25519 AAAA...").
func AuthorizedKey(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// keyTypeLabel names a key type the way ssh-keygen -l does.
func keyTypeLabel(k ssh.PublicKey) string {
	t := k.Type()
	switch {
	case strings.Contains(t, "ed25519"):
		return "ED25519"
	case strings.Contains(t, "ecdsa"):
		return "ECDSA"
	case strings.Contains(t, "rsa"):
		return "RSA"
	}
	return strings.ToUpper(t)
}

// Policy decides which host keys are acceptable for one endpoint: the
// pinned ones, else those in known_hosts files under the endpoint's address
// or its name (the HostKeyAlias of the generated OpenSSH config), or a
// host certificate an authority vouches for; a key no one vouches for only
// when Accept says so, and then it is recorded in AcceptFile.
type Policy struct {
	// Instance names the endpoint in messages.
	Instance string
	// Alias is the name accepted keys are recorded under.
	Alias string
	// Addr is the address the key is checked for (host:port).
	Addr string
	// HostName is the principal a host certificate must name.
	HostName string
	// CAs are the hive's certificate authorities (see ParseCAs).
	CAs []ssh.PublicKey
	// Names are looked up in known_hosts, in order; the first is also the
	// one @revoked lines are checked for. There must be at least one.
	Names []string
	// Pinned are the endpoint's own keys; when any is set, the host must
	// present one of them and known_hosts files and authorities are not
	// consulted.
	Pinned []ssh.PublicKey
	// Files are the known_hosts files consulted; those that do not exist
	// are skipped.
	Files []string
	// Accept records and accepts the key of a host that has neither a
	// pinned nor a known key. A mismatch is still refused.
	Accept bool
	// AcceptFile is the known_hosts file accepted keys are appended to.
	AcceptFile string
	// AcceptMu serialises appends to AcceptFile; every Policy writing to
	// the same file must share it.
	AcceptMu *sync.Mutex
}

// lookupKeyType is a key no file can contain; checking it yields every
// known key for a name.
type lookupKeyType struct{}

func (lookupKeyType) Type() string                                 { return "nix-hive-lookup" }
func (lookupKeyType) Marshal() []byte                              { return []byte("\x00\x00\x00\x0fnix-hive-lookup") }
func (lookupKeyType) Verify(data []byte, sig *ssh.Signature) error { return errors.New("not a key") }

// dummyRemote satisfies knownhosts, which only uses it when no name is
// given; tunneled connections have no meaningful remote address anyway.
var dummyRemote = &net.TCPAddr{IP: net.IPv4zero, Port: 22}

// Known returns the keys accepted from the endpoint's host: its pinned
// keys, else those the known_hosts files hold for it, read afresh.
func (h *Policy) Known() ([]ssh.PublicKey, error) {
	keys, _, _, err := h.known()
	return keys, err
}

// known returns the keys recorded for the endpoint and where, reading the
// files afresh so keys accepted by other dials are seen.
func (h *Policy) known() (keys []ssh.PublicKey, where []string, revoked func(ssh.PublicKey) *knownhosts.KnownKey, err error) {
	if len(h.Pinned) > 0 {
		for range h.Pinned {
			where = append(where, "hostKey")
		}
		return h.Pinned, where, func(ssh.PublicKey) *knownhosts.KnownKey { return nil }, nil
	}
	var files []string
	for _, f := range h.Files {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	cb, err := knownhosts.New(files...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read known_hosts for %s: %w", h.Instance, err)
	}
	for _, name := range h.Names {
		var kerr *knownhosts.KeyError
		if err := cb(name, dummyRemote, lookupKeyType{}); errors.As(err, &kerr) {
			for _, k := range kerr.Want {
				if !slices.ContainsFunc(keys, func(x ssh.PublicKey) bool { return bytes.Equal(x.Marshal(), k.Key.Marshal()) }) {
					keys = append(keys, k.Key)
					where = append(where, fmt.Sprintf("%s:%d", k.Filename, k.Line))
				}
			}
		}
	}
	revoked = func(k ssh.PublicKey) *knownhosts.KnownKey {
		var rerr *knownhosts.RevokedError
		if err := cb(h.Names[0], dummyRemote, k); errors.As(err, &rerr) {
			return &rerr.Revoked
		}
		return nil
	}
	return keys, where, revoked, nil
}

// algorithms lists host key algorithms for the known keys so the server
// offers a key we can check (as OpenSSH does); nil means the defaults.
func algorithms(keys []ssh.PublicKey) []string {
	ok := append(ssh.SupportedAlgorithms().HostKeys, ssh.InsecureAlgorithms().HostKeys...)
	var out []string
	add := func(a string) {
		if slices.Contains(ok, a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, k := range keys {
		if k.Type() == ssh.KeyAlgoRSA {
			add(ssh.KeyAlgoRSASHA512)
			add(ssh.KeyAlgoRSASHA256)
		}
		add(k.Type())
	}
	return out
}

// Callback builds the HostKeyCallback and the algorithm preference for one
// dial. The callback's refusals are *Error.
func (h *Policy) Callback() (ssh.HostKeyCallback, []string, error) {
	keys, where, revoked, err := h.known()
	if err != nil {
		return nil, nil, err
	}
	certs, certCheck, err := h.certificates()
	if err != nil {
		return nil, nil, err
	}
	var certErr error
	var check func(got ssh.PublicKey) error
	check = func(got ssh.PublicKey) error {
		if cert, ok := got.(*ssh.Certificate); ok {
			// As OpenSSH: a certificate no authority vouches for is
			// checked as the plain key inside it.
			if certErr = certCheck(cert); certErr == nil {
				return nil
			}
			return check(cert.Key)
		}
		if r := revoked(got); r != nil {
			return &Error{Instance: h.Instance, Addr: h.Addr, Got: got, Revoked: true,
				Want: []string{ssh.FingerprintSHA256(r.Key)}, Where: []string{fmt.Sprintf("%s:%d", r.Filename, r.Line)}}
		}
		for _, k := range keys {
			if bytes.Equal(k.Marshal(), got.Marshal()) {
				return nil
			}
		}
		if len(keys) > 0 {
			e := &Error{Instance: h.Instance, Addr: h.Addr, Got: got, Where: where, Cert: certErr}
			for _, k := range keys {
				e.Want = append(e.Want, keyTypeLabel(k)+" "+ssh.FingerprintSHA256(k))
			}
			return e
		}
		if !h.Accept || certErr != nil {
			// A certificate that failed its check is never accepted as
			// new: the host claims an authority that does not vouch for it.
			return &Error{Instance: h.Instance, Addr: h.Addr, Got: got, Cert: certErr}
		}
		return h.record(got)
	}
	cb := func(_ string, _ net.Addr, got ssh.PublicKey) error { return check(got) }
	algos := algorithms(keys)
	if certs {
		algos = append(certAlgorithms(keys), algos...)
	}
	return cb, algos, nil
}

// Certified says whether a host certificate may vouch for the endpoint's
// host: it has no pinned keys, and a hostCA or an @cert-authority line of
// the known_hosts files names an authority.
func (h *Policy) Certified() (bool, error) {
	ok, _, err := h.certificates()
	return ok, err
}

// certificates says whether host certificates may be accepted for the
// endpoint (it has no pins, and the hive or a known_hosts file names an
// authority) and returns their check: signed by one of the hive's
// hostCAs or by an @cert-authority of the known_hosts files for the
// address, valid now, naming the HostName as a principal.
func (h *Policy) certificates() (bool, func(*ssh.Certificate) error, error) {
	none := func(*ssh.Certificate) error { return errors.New("no certificate authority is trusted for it") }
	if len(h.Pinned) > 0 {
		return false, none, nil
	}
	var files []string
	for _, f := range h.Files {
		if hasCertAuthority(f) {
			files = append(files, f)
		}
	}
	if len(h.CAs) == 0 && len(files) == 0 {
		return false, none, nil
	}
	var known ssh.HostKeyCallback
	if len(files) > 0 {
		cb, err := knownhosts.New(files...)
		if err != nil {
			return false, nil, fmt.Errorf("read known_hosts for %s: %w", h.Instance, err)
		}
		known = cb
	}
	hive := &ssh.CertChecker{IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
		return slices.ContainsFunc(h.CAs, func(ca ssh.PublicKey) bool { return bytes.Equal(ca.Marshal(), auth.Marshal()) })
	}}
	// The principal is the HostName, as OpenSSH checks it without a
	// HostKeyAlias (the generated config sets none for such hosts).
	addr := joinHostPort(h.HostName, portOf(h.Addr))
	return true, func(cert *ssh.Certificate) error {
		err := hive.CheckHostKey(addr, dummyRemote, cert)
		if err != nil && known != nil {
			if kerr := known(addr, dummyRemote, cert); kerr == nil {
				return nil
			} else if len(h.CAs) == 0 {
				err = kerr
			}
		}
		return err
	}, nil
}

// hasCertAuthority reports whether a known_hosts file has an
// @cert-authority line.
func hasCertAuthority(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for len(data) > 0 {
		marker, _, _, _, rest, err := ssh.ParseKnownHosts(data)
		if err != nil {
			return false
		}
		if marker == "cert-authority" {
			return true
		}
		data = rest
	}
	return false
}

// certAlgorithms are the certificate algorithms to ask for, before the
// plain ones: those of the known keys' types, or all when none is known.
func certAlgorithms(keys []ssh.PublicKey) []string {
	all := []string{ssh.CertAlgoED25519v01, ssh.CertAlgoECDSA256v01, ssh.CertAlgoECDSA384v01, ssh.CertAlgoECDSA521v01,
		ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01}
	if len(keys) == 0 {
		return all
	}
	var out []string
	for _, k := range keys {
		switch k.Type() {
		case ssh.KeyAlgoED25519:
			out = append(out, ssh.CertAlgoED25519v01)
		case ssh.KeyAlgoECDSA256:
			out = append(out, ssh.CertAlgoECDSA256v01)
		case ssh.KeyAlgoECDSA384:
			out = append(out, ssh.CertAlgoECDSA384v01)
		case ssh.KeyAlgoECDSA521:
			out = append(out, ssh.CertAlgoECDSA521v01)
		case ssh.KeyAlgoRSA:
			out = append(out, ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01)
		}
	}
	return out
}

// ParseCAs parses the hive's hostCA keys (authorized_keys form).
func ParseCAs(lines []string) ([]ssh.PublicKey, error) {
	var out []ssh.PublicKey
	for i, line := range lines {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("hostCA #%d %q: %w; expected \"ssh-ed25519 AAAA...\"", i+1, line, err)
		}
		out = append(out, k)
	}
	return out, nil
}

// joinHostPort is host:port, the host in brackets if it is an IPv6
// address, as known_hosts and certificate checks look it up.
func joinHostPort(host string, port int) string {
	h := host
	if strings.Contains(h, ":") && !strings.HasPrefix(h, "[") {
		h = "[" + h + "]"
	}
	return h + ":" + strconv.Itoa(port)
}

// portOf is addr's port, 22 if it has none.
func portOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 22
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return 22
	}
	return n
}

// record appends an accepted key under the instance's alias, as ssh's
// accept-new does with the generated config's HostKeyAlias.
func (h *Policy) record(k ssh.PublicKey) error {
	h.AcceptMu.Lock()
	defer h.AcceptMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(h.AcceptFile), 0o700); err != nil {
		return fmt.Errorf("record host key of %s: %w", h.Instance, err)
	}
	f, err := os.OpenFile(h.AcceptFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record host key of %s: %w", h.Instance, err)
	}
	line := knownhosts.Line([]string{h.Alias}, k) + "\n"
	// A file whose last line lacks its newline would glue our line to it.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if r, err := os.Open(h.AcceptFile); err == nil {
			if _, err := r.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
				line = "\n" + line
			}
			r.Close()
		}
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("record host key of %s in %s: %w", h.Instance, h.AcceptFile, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("record host key of %s in %s: %w", h.Instance, h.AcceptFile, err)
	}
	return nil
}
