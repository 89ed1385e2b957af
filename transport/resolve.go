package transport

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/kevinburke/ssh_config"
	"golang.org/x/crypto/ssh"

	"github.com/nix-hive/nix-hive/endpoint"
	"github.com/nix-hive/nix-hive/shell"
)

// Effective is what the client will actually use for an instance after the
// hive, the user's ssh config and the defaults are merged (hive first).
type Effective struct {
	Name     string
	HostName string
	// Fallbacks are addresses tried after HostName, in order; the
	// connection says which answered (Pool.Reached).
	Fallbacks []string
	User      string
	Port      int
	// JumpChain lists the hops in dial order: the first is reached directly
	// from this machine, the last is the one that reaches Name. Empty means
	// a direct connection.
	JumpChain []string
	// IdentityFiles are the explicit identity files (hive, else user
	// config), tilde-expanded. Empty means the ssh agent and the default
	// ~/.ssh/id_* files.
	IdentityFiles []string
	// IdentitiesOnly skips agent keys that are not among IdentityFiles.
	IdentitiesOnly bool
	// CertificateFiles are user certificates (hive CertificateFile, else
	// the user's config), offered with the keys they certify; an
	// identity's <file>-cert.pub is offered too, as OpenSSH does.
	CertificateFiles []string
	// ProxyCommand, from the user's ssh config for an instance the hive
	// gives no jump, is run on this machine to reach the host (SSM,
	// Teleport, cloudflared): its stdin and stdout are the connection.
	// Tokens are not yet expanded; ProxyCommandLine does that.
	ProxyCommand string
	// Pinned are the host keys the hive pins (Endpoint.HostKeys): when
	// there are any, the host must present one of them, and known_hosts
	// files are not consulted.
	Pinned []ssh.PublicKey
	// Options are the hive's ssh options (Endpoint.Options), sorted by
	// name: the generated OpenSSH config has every one of them.
	Options []Option
	// Ciphers, KexAlgorithms and MACs are what nix-hive's client offers,
	// in order: its own lists (see cipherAlgorithms), changed by the
	// hive's option of that name, else the user's ssh config's, as
	// OpenSSH changes its defaults (algorithmList), less the names
	// x/crypto/ssh does not implement (OpenSSH's config may name them).
	Ciphers, KexAlgorithms, MACs []string
}

// Option is one of the hive's OpenSSH options of an instance.
type Option struct{ Key, Value string }

// ProxyCommandLine is the ProxyCommand with %h, %p, %r, %n, %u, %d and %%
// expanded, as OpenSSH expands it, except that each value is quoted for
// the shell that runs the line: the hive's rules already keep names,
// hosts and users to plain words (quoting leaves those as they are), and
// this keeps a value that escaped them from ever running.
func (e Effective) ProxyCommandLine() string {
	return expandTokens(e.ProxyCommand, tokens{alias: e.Name, host: e.HostName, port: e.Port, user: e.User, quote: shell.Quote})
}

// addresses are s as it is dialed at each of its addresses, HostName
// first.
func (s *settings) addresses() []*settings {
	out := []*settings{s}
	for _, h := range s.Fallbacks {
		t := *s
		t.HostName, t.Fallbacks = h, nil
		out = append(out, &t)
	}
	return out
}

// Addr is the host:port to dial for the instance (from its last jump hop,
// if any).
func (e Effective) Addr() string {
	return joinHostPort(e.HostName, e.Port)
}

// settings is one endpoint after validation and merging.
type settings struct {
	Effective
}

// nameRE is what OpenSSH takes as a Host alias; other names get one
// derived from them (Alias).
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)

// Alias is an instance's name in generated OpenSSH files (Host,
// HostKeyAlias, ProxyJump, known_hosts) and in ssh:// store URLs, and the
// name accepted host keys are recorded under: the name itself when
// OpenSSH accepts it as a host alias, else a stable stand-in derived from
// it, so an instance named with spaces, quotes or $(...) is never pasted
// into a config line or a command.
func Alias(name string) string {
	if nameRE.MatchString(name) && !strings.HasPrefix(name, "nix-hive-") {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "nix-hive-" + hex.EncodeToString(sum[:8])
}

// resolveAll validates every endpoint and merges it with the user's ssh
// config; it reports jump cycles with the whole cycle.
func resolveAll(cfg Config, uc *userConfig) (map[string]*settings, error) {
	names := make([]string, 0, len(cfg.Endpoints))
	for k := range cfg.Endpoints {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make(map[string]*settings, len(names))
	for _, key := range names {
		ep := cfg.Endpoints[key]
		if ep.Name == "" {
			ep.Name = key
		}
		if ep.Name != key {
			return nil, fmt.Errorf("instance %s: endpoint is named %q; the name must equal its key", key, ep.Name)
		}
		s, err := resolveOne(ep, uc)
		if err != nil {
			return nil, err
		}
		out[key] = s
	}
	for _, key := range names {
		chain, err := jumpChain(cfg.Endpoints, key)
		if err != nil {
			return nil, err
		}
		out[key].JumpChain = chain
	}
	return out, nil
}

func jumpChain(eps map[string]Endpoint, name string) ([]string, error) {
	seen := map[string]bool{name: true}
	path := []string{name}
	var chain []string
	for cur := eps[name].Jump; cur != ""; cur = eps[cur].Jump {
		prev := path[len(path)-1]
		if _, ok := eps[cur]; !ok {
			return nil, fmt.Errorf("instance %s: jump = %q is not an instance of the hive", prev, cur)
		}
		path = append(path, cur)
		if seen[cur] {
			return nil, fmt.Errorf("instance %s: jump chain has a cycle: %s", name, strings.Join(path, " -> "))
		}
		seen[cur] = true
		chain = append([]string{cur}, chain...)
	}
	return chain, nil
}

func resolveOne(ep Endpoint, uc *userConfig) (*settings, error) {
	name := ep.Name
	if err := checkEndpoint(ep); err != nil {
		return nil, err
	}
	s := &settings{Effective: Effective{Name: name}}
	for i, line := range ep.HostKeys {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("instance %s: hostKey #%d %q: %w; expected \"ssh-ed25519 AAAA...\"", name, i+1, line, err)
		}
		s.Pinned = append(s.Pinned, k)
	}
	for k, v := range ep.Options {
		if err := checkOption(name, k, v); err != nil {
			return nil, err
		}
		s.Options = append(s.Options, Option{k, v})
	}
	sort.Slice(s.Options, func(i, j int) bool { return s.Options[i].Key < s.Options[j].Key })
	// The hive first, then the user's ssh config, then OpenSSH's defaults.
	s.HostName = firstOf(endpoint.HostName(ep.Host), expandTokens(uc.get(name, "HostName"), tokens{alias: name}), name)
	for _, h := range ep.Fallbacks {
		s.Fallbacks = append(s.Fallbacks, endpoint.HostName(h))
	}
	port, err := userPort(uc, name)
	if err != nil {
		return nil, err
	}
	s.Port = firstNonZero(ep.Port, port, 22)
	s.User = firstOf(ep.User, uc.get(name, "User"), "root")
	ids := uc.getAll(name, "IdentityFile")
	if v := optionValue(ep.Options, "IdentityFile"); v != "" {
		ids = strings.Split(v, ",")
	}
	for _, id := range ids {
		id = strings.TrimSpace(id)
		if id == "" || strings.EqualFold(id, "none") {
			continue
		}
		s.IdentityFiles = append(s.IdentityFiles, expandPath(expandTokens(id, tokens{alias: name, host: s.HostName, user: s.User})))
	}
	certs := uc.getAll(name, "CertificateFile")
	if v := optionValue(ep.Options, "CertificateFile"); v != "" {
		certs = strings.Split(v, ",")
	}
	for _, c := range certs {
		if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "none") {
			s.CertificateFiles = append(s.CertificateFiles, expandPath(expandTokens(c, tokens{alias: name, host: s.HostName, user: s.User})))
		}
	}
	only := firstOf(optionValue(ep.Options, "IdentitiesOnly"), uc.get(name, "IdentitiesOnly"))
	s.IdentitiesOnly = strings.EqualFold(only, "yes")
	if err := s.resolveAlgorithms(ep, uc); err != nil {
		return nil, err
	}
	// OpenSSH takes the first of ProxyJump and ProxyCommand it reads; the
	// hive's jump is written first, so the user's ProxyCommand applies
	// only where the hive has none.
	if ep.Jump == "" {
		if pc := uc.get(name, "ProxyCommand"); pc != "" && !strings.EqualFold(pc, "none") {
			s.ProxyCommand = pc
		}
	}
	return s, nil
}

// checkEndpoint applies the hive's rules (package endpoint) again, for
// endpoints that did not come through eval; "" host or user means the
// user's ssh config decides.
func checkEndpoint(ep Endpoint) error {
	name := ep.Name
	if err := endpoint.CheckName(name); err != nil {
		return fmt.Errorf("instance %q: name %w", name, err)
	}
	if ep.Host != "" {
		if err := endpoint.CheckHost(ep.Host); err != nil {
			return fmt.Errorf("instance %s: host %q %w", name, ep.Host, err)
		}
	}
	for _, h := range ep.Fallbacks {
		if err := endpoint.CheckHost(h); err != nil {
			return fmt.Errorf("instance %s: host %q %w", name, h, err)
		}
	}
	if ep.User != "" {
		if err := endpoint.CheckUser(ep.User); err != nil {
			return fmt.Errorf("instance %s: user %q %w", name, ep.User, err)
		}
	}
	if ep.Port < 0 || ep.Port > 65535 {
		return fmt.Errorf("instance %s: port %d is out of range", name, ep.Port)
	}
	return nil
}

func checkOption(name, k, v string) error {
	if err := endpoint.CheckOption(k, v); err != nil {
		return fmt.Errorf("instance %s: %w", name, err)
	}
	return nil
}

// userPort is the Port the user's ssh config gives name, 0 for none.
func userPort(uc *userConfig, name string) (int, error) {
	p := uc.get(name, "Port")
	if p == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 || n > 65535 {
		return 0, fmt.Errorf("instance %s: Port %q in %s is not a port number", name, p, uc.path)
	}
	return n, nil
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

func firstNonZero(vs ...int) int {
	for _, v := range vs {
		if v != 0 {
			return v
		}
	}
	return 0
}

// optionValue looks a key up case-insensitively, as OpenSSH does.
func optionValue(opts map[string]string, key string) string {
	for k, v := range opts {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}

func joinHostPort(host string, port int) string {
	h := host
	if strings.Contains(h, ":") && !strings.HasPrefix(h, "[") {
		h = "[" + h + "]"
	}
	return h + ":" + strconv.Itoa(port)
}

// homeDir is the user's home; OpenSSH uses the passwd entry, Go code the
// environment, and they agree unless HOME was changed on purpose.
func homeDir() string {
	if h, err := os.UserHomeDir(); err == nil {
		return h
	}
	if u, err := user.Current(); err == nil {
		return u.HomeDir
	}
	return "/"
}

// expandPath expands a leading "~/" like OpenSSH does for file options.
func expandPath(p string) string {
	if p == "~" {
		return homeDir()
	}
	if strings.HasPrefix(p, "~/") {
		return filepath.Join(homeDir(), p[2:])
	}
	return p
}

// tokens are the values of ssh_config(5)'s %-tokens for one host.
type tokens struct {
	alias, host, user string
	port              int
	// quote, if set, is applied to every value expanded.
	quote func(string) string
}

// expandTokens expands the %-tokens of ssh_config(5) that make sense here;
// unknown ones (and those without a value) are left alone.
func expandTokens(s string, t tokens) string {
	if !strings.Contains(s, "%") {
		return s
	}
	put := func(b *strings.Builder, v string) {
		if t.quote != nil {
			v = t.quote(v)
		}
		b.WriteString(v)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case '%':
			b.WriteByte('%')
		case 'd':
			put(&b, homeDir())
		case 'h':
			put(&b, firstOf(t.host, t.alias))
		case 'n':
			put(&b, t.alias)
		case 'r':
			put(&b, t.user)
		case 'p':
			if t.port == 0 {
				b.WriteString("%p")
				break
			}
			b.WriteString(strconv.Itoa(t.port))
		case 'u':
			if u, err := user.Current(); err == nil {
				put(&b, u.Username)
			}
		default:
			b.WriteByte('%')
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// userConfig is the user's ~/.ssh/config; a nil *userConfig has no values.
type userConfig struct {
	path string
	cfg  *ssh_config.Config
}

// loadUserConfig reads path (UserConfigFile; "" is none). A file that
// does not exist is no error; one that the parser cannot read
// (ssh_config lacks "Match exec", for instance) is returned as a warning,
// because ssh itself still reads it through the generated config's Include.
func loadUserConfig(path string) (uc *userConfig, warning error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return &userConfig{path: path}, nil
		}
		return &userConfig{path: path}, fmt.Errorf("read ssh config %s: %w", path, err)
	}
	defer f.Close()
	c, err := ssh_config.Decode(f)
	if err != nil {
		return &userConfig{path: path}, fmt.Errorf("parse ssh config %s (its defaults are ignored by nix-hive's own client): %w", path, err)
	}
	return &userConfig{path: path, cfg: c}, nil
}

func (u *userConfig) get(alias, key string) string {
	if u == nil || u.cfg == nil {
		return ""
	}
	v, err := u.cfg.Get(alias, key)
	if err != nil {
		return ""
	}
	return v
}

func (u *userConfig) getAll(alias, key string) []string {
	if u == nil || u.cfg == nil {
		return nil
	}
	v, err := u.cfg.GetAll(alias, key)
	if err != nil {
		return nil
	}
	return v
}

// knownNames are the names s's host keys may be recorded under in
// known_hosts files: its address, as plain ssh records it, and its alias,
// as the generated config's HostKeyAlias and AcceptNewHostKeys record it.
func (s *settings) knownNames() []string {
	return []string{s.Addr(), joinHostPort(Alias(s.Name), 22)}
}

// resolveAlgorithms sets s's Ciphers, KexAlgorithms and MACs: ep's
// option, else the user's config's, applied to nix-hive's lists.
func (s *settings) resolveAlgorithms(ep Endpoint, uc *userConfig) error {
	supported := ssh.SupportedAlgorithms()
	for _, a := range []struct {
		key                 string
		dst                 *[]string
		defaults, supported []string
	}{
		{"Ciphers", &s.Ciphers, cipherAlgorithms, supported.Ciphers},
		{"KexAlgorithms", &s.KexAlgorithms, kexAlgorithms, supported.KeyExchanges},
		{"MACs", &s.MACs, macAlgorithms, supported.MACs},
	} {
		v, from := optionValue(ep.Options, a.key), "the hive's ssh options"
		if v == "" && uc != nil {
			v, from = uc.get(s.Name, a.key), uc.path
		}
		list, err := algorithmList(v, a.defaults, a.supported)
		if err != nil {
			return fmt.Errorf("instance %s: %s %q (%s): %w", s.Name, a.key, v, from, err)
		}
		*a.dst = list
	}
	return nil
}

// algorithmList is what an OpenSSH option like Ciphers makes of
// defaults: a list replaces them, "+list" appends to them, "-patterns"
// removes those matching (with * and ?), "^list" puts the list first;
// "" leaves them. Names supported does not hold are left out: OpenSSH
// implements some that x/crypto/ssh does not, and the option serves both
// clients. A list that leaves none is an error, not the defaults: an
// option that restricts the algorithms must never widen them.
func algorithmList(value string, defaults, supported []string) ([]string, error) {
	if value == "" {
		return slices.Clone(defaults), nil
	}
	op, rest := value[0], value[1:]
	names := strings.Split(rest, ",")
	if op != '+' && op != '-' && op != '^' {
		op, names = 0, strings.Split(value, ",")
	}
	for i := range names {
		names[i] = strings.TrimSpace(names[i])
	}
	var list []string
	switch op {
	case '+':
		list = append(slices.Clone(defaults), names...)
	case '^':
		list = append(slices.Clone(names), defaults...)
	case '-':
		for _, d := range defaults {
			if !slices.ContainsFunc(names, func(p string) bool { ok, _ := path.Match(p, d); return ok }) {
				list = append(list, d)
			}
		}
	default:
		list = names
	}
	var out []string
	for _, n := range list {
		if slices.Contains(supported, n) && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("leaves nix-hive's client none it implements (it implements %s)", strings.Join(supported, ","))
	}
	return out, nil
}
