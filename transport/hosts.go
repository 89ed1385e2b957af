package transport

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/hostkey"
)

// Hosts is how a pool reaches and checks each of its instances, resolved
// once by NewPool: every endpoint validated and merged with the user's
// ssh config and the defaults, the known_hosts files and authorities its
// host keys are checked against, and the identities it logs in with. To
// its users it is read-only: the OpenSSH files for tools that run ssh
// themselves are written from it (package openssh), so that ssh and the
// pool never disagree.
type Hosts struct {
	cfg       Config // defaults filled in
	endpoints map[string]*settings
	known     []string // known_hosts files consulted, in order
	cas       []ssh.PublicKey
	warnings  []string

	acceptMu sync.Mutex // serialises appends to AcceptedKnownHosts
	ids      identities // identity files decrypted in this run

	reachedMu sync.Mutex
	reached   map[string]string // of an instance's several addresses, the one that answered
}

// newHosts validates cfg's endpoints (names, addresses, pinned keys,
// options, jump references and cycles) and merges them with the user's
// ssh config.
func newHosts(cfg Config) (*Hosts, error) {
	cfg = WithDefaults(cfg)
	uc, warn := loadUserConfig(UserConfigFile(cfg))
	eps, err := resolveAll(cfg, uc)
	if err != nil {
		return nil, err
	}
	cas, err := hostkey.ParseCAs(cfg.HostCAs)
	if err != nil {
		return nil, err
	}
	h := &Hosts{cfg: cfg, endpoints: eps, known: knownFiles(cfg), cas: cas}
	if warn != nil {
		h.warnings = append(h.warnings, warn.Error())
	}
	return h, nil
}

// WithDefaults is cfg with the defaults of the fields it leaves unset,
// as a pool uses it.
func WithDefaults(cfg Config) Config {
	if cfg.KnownHostsFiles == nil {
		cfg.KnownHostsFiles = []string{filepath.Join(homeDir(), ".ssh", "known_hosts")}
	}
	if cfg.AcceptedKnownHosts == "" {
		cfg.AcceptedKnownHosts = filepath.Join(homeDir(), ".ssh", "known_hosts")
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.KeepAliveTimeout <= 0 {
		cfg.KeepAliveTimeout = 3 * cfg.KeepAlive
	}
	return cfg
}

// UserConfigFile is the user's OpenSSH config that cfg's endpoints are
// merged with: Config.UserConfig, else ~/.ssh/config, with a leading ~
// expanded; "" when it is "none". The file may not exist.
func UserConfigFile(cfg Config) string {
	switch cfg.UserConfig {
	case "none":
		return ""
	case "":
		return filepath.Join(homeDir(), ".ssh", "config")
	}
	return expandPath(cfg.UserConfig)
}

// knownFiles lists the known_hosts files to consult: the file new keys go
// to first (a key accepted by one run is known to the next, with or
// without accepting), then the configured ones.
func knownFiles(cfg Config) []string {
	out := []string{expandPath(cfg.AcceptedKnownHosts)}
	for _, f := range cfg.KnownHostsFiles {
		f = expandPath(f)
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// Config is the Config the hosts were resolved from, defaults filled in.
func (h *Hosts) Config() Config {
	cfg := h.cfg
	cfg.Endpoints = maps.Clone(cfg.Endpoints)
	cfg.KnownHostsFiles = slices.Clone(cfg.KnownHostsFiles)
	cfg.HostCAs = slices.Clone(cfg.HostCAs)
	return cfg
}

// Names are the instances, sorted.
func (h *Hosts) Names() []string { return slices.Sorted(maps.Keys(h.endpoints)) }

// Warnings are non-fatal problems found resolving the hosts (an
// unreadable user ssh config, for instance), for the caller to show.
func (h *Hosts) Warnings() []string { return slices.Clone(h.warnings) }

// Resolve returns the effective settings of an instance: host, port, user
// and jump chain after merging the hive, the user's ssh config and the
// defaults. `ssh -G` on the config package openssh writes agrees with it.
func (h *Hosts) Resolve(name string) (Effective, error) {
	s, ok := h.endpoints[name]
	if !ok {
		return Effective{}, fmt.Errorf("%w %q", ErrUnknownInstance, name)
	}
	e := s.Effective
	if r := h.reachedAddr(name); r != "" && r != e.HostName {
		// The address that answered first, the others after it: what
		// an OpenSSH config written now should use.
		e.Fallbacks = slices.DeleteFunc(append([]string{e.HostName}, e.Fallbacks...), func(a string) bool { return a == r })
		e.HostName = r
	}
	e.Fallbacks = slices.Clone(e.Fallbacks)
	e.JumpChain = slices.Clone(e.JumpChain)
	e.IdentityFiles = slices.Clone(e.IdentityFiles)
	e.CertificateFiles = slices.Clone(e.CertificateFiles)
	e.Pinned = slices.Clone(e.Pinned)
	e.Options = slices.Clone(e.Options)
	return e, nil
}

// setReached records which of name's addresses a connection reached.
func (h *Hosts) setReached(name, addr string) {
	h.reachedMu.Lock()
	defer h.reachedMu.Unlock()
	if h.reached == nil {
		h.reached = map[string]string{}
	}
	h.reached[name] = addr
}

func (h *Hosts) reachedAddr(name string) string {
	h.reachedMu.Lock()
	defer h.reachedMu.Unlock()
	return h.reached[name]
}

// KnownHostsFiles are the known_hosts files consulted for hosts without
// pinned keys, in order: the one accepted keys go to
// (Config.AcceptedKnownHosts) first, then Config.KnownHostsFiles.
func (h *Hosts) KnownHostsFiles() []string { return slices.Clone(h.known) }

// HostCAs are the hive's certificate authorities (Config.HostCAs).
func (h *Hosts) HostCAs() []ssh.PublicKey { return slices.Clone(h.cas) }

// KnownKeys are the keys accepted from an instance's host: its pinned
// keys, else those the known_hosts files hold for it, read afresh.
func (h *Hosts) KnownKeys(name string) ([]ssh.PublicKey, error) {
	s, ok := h.endpoints[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownInstance, name)
	}
	keys, err := h.hostKeys(s).Known()
	return slices.Clone(keys), err
}

// Certified says whether a host certificate may vouch for an instance's
// host: it has no pinned keys, and a hive hostCA or an @cert-authority
// line of the known_hosts files names an authority.
func (h *Hosts) Certified(name string) bool {
	s, ok := h.endpoints[name]
	if !ok {
		return false
	}
	ok, err := h.hostKeys(s).Certified()
	return ok && err == nil
}

// DialBound is how long connecting to an instance may take:
// ConnectTimeout per hop and per address, as when a pool dials it, and as long as a
// command waits for a holder to (ConnectTimeout for a name that is no
// instance).
func (h *Hosts) DialBound(name string) time.Duration {
	if s, ok := h.endpoints[name]; ok {
		// Each hop, and each of the instance's addresses, within its own.
		return time.Duration(1+len(s.JumpChain)+len(s.Fallbacks)) * h.cfg.ConnectTimeout
	}
	return h.cfg.ConnectTimeout
}

// hostKeys is what decides s's host keys.
func (h *Hosts) hostKeys(s *settings) *hostkey.Policy {
	return &hostkey.Policy{
		Instance:   s.Name,
		Addr:       s.Addr(),
		Alias:      Alias(s.Name),
		HostName:   s.HostName,
		CAs:        h.cas,
		Names:      s.knownNames(),
		Pinned:     s.Pinned,
		Files:      h.known,
		Accept:     h.cfg.AcceptNewHostKeys,
		AcceptFile: expandPath(h.cfg.AcceptedKnownHosts),
		AcceptMu:   &h.acceptMu,
	}
}

// clientConfig is the SSH client configuration of one handshake with s:
// its host key checks and its keys; closeAgent releases the agent.
func (h *Hosts) clientConfig(s *settings) (cc *ssh.ClientConfig, closeAgent func(), err error) {
	cb, algos, err := h.hostKeys(s).Callback()
	if err != nil {
		return nil, nil, err
	}
	auth, closeAgent, err := h.authFor(s)
	if err != nil {
		return nil, nil, err
	}
	cc = &ssh.ClientConfig{User: s.User, Auth: []ssh.AuthMethod{auth}, HostKeyCallback: cb, HostKeyAlgorithms: algos}
	cc.KeyExchanges, cc.Ciphers, cc.MACs = s.KexAlgorithms, s.Ciphers, s.MACs
	return cc, closeAgent, nil
}

// The algorithms offered, in order of preference: x/crypto's defaults
// without SHA-1 and the larger NIST curves. Every sshd since OpenSSH 6.5
// (2014), FIPS builds included, shares one of them with this list, and
// each name left out is bytes saved on every connection, which a deploy
// of a thousand hosts makes two thousand of.
//
// ChaCha20-Poly1305 comes first, as in OpenSSH's own client: it pads a
// message to 8 bytes where AES-GCM pads to 16, about 4 bytes less on
// each of the small messages a deploy is made of, in each layer of SSH a
// message crosses (three for a host behind two jump hosts). AES-GCM
// stays for the sshds that refuse ChaCha20 (FIPS builds).
var (
	kexAlgorithms = []string{ssh.KeyExchangeMLKEM768X25519, ssh.KeyExchangeCurve25519,
		ssh.KeyExchangeECDHP256, ssh.KeyExchangeDH14SHA256}
	cipherAlgorithms = []string{ssh.CipherChaCha20Poly1305, ssh.CipherAES128GCM, ssh.CipherAES256GCM,
		ssh.CipherAES128CTR, ssh.CipherAES256CTR}
	macAlgorithms = []string{ssh.HMACSHA256ETM, ssh.HMACSHA512ETM, ssh.HMACSHA256, ssh.HMACSHA512}
)
