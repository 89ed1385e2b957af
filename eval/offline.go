package eval

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"
)

// unreachableSubstituters lists the http(s) substituters of this machine's
// Nix configuration that do not accept a connection within a second. Nix
// retries each one for every path it builds, so offline, every build
// stalls for seconds with no word of why; nix-hive says it once.
func (e *Evaluator) unreachableSubstituters(ctx context.Context) []string {
	var conf map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	// show-config: on every release (2.24 calls it a deprecated alias of
	// `config show`, on stderr, which Quiet keeps out of sight).
	if err := e.Nix.Quiet().JSON(ctx, &conf, "nix", "show-config", "--json"); err != nil {
		return nil
	}
	var subs []string
	if err := json.Unmarshal(conf["substituters"].Value, &subs); err != nil {
		return nil
	}
	var mu sync.Mutex
	var out []string
	var wg sync.WaitGroup
	for _, s := range subs {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
			continue
		}
		port := u.Port()
		if port == "" {
			port = map[string]string{"https": "443", "http": "80"}[u.Scheme]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: time.Second}
			c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(u.Hostname(), port))
			if err == nil {
				c.Close()
				return
			}
			mu.Lock()
			out = append(out, s)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// warnOffline says, before the first build of a run, which substituters
// will make it wait.
func (e *Evaluator) warnOffline(ctx context.Context) {
	if e.Warn == nil {
		return
	}
	e.offlineOnce.Do(func() { e.warnUnreachable(ctx) })
}

func (e *Evaluator) warnUnreachable(ctx context.Context) {
	for _, s := range e.unreachableSubstituters(ctx) {
		e.Warn(fmt.Sprintf("substituter %s is unreachable: Nix waits for it on every path it builds; offline, set `substituters =` in nix.conf (or NIX_CONFIG), or give the hive nix.build.flags = [ \"--option\" \"substituters\" \"\" ];", s))
	}
}
