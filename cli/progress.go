package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/nix-hive/nix-hive/deploy"
)

// deployView renders deploy events. All three renderings come from the same
// events: JSON lines on stdout (--json), plain lines on stderr (logs, CI),
// and on a terminal the same lines above a progress bar of finished hosts.
type deployView struct {
	mu    sync.Mutex // serialises writes of lines
	json  io.Writer  // --json: events as JSON lines
	log   io.Writer  // plain lines
	start time.Time
	p     *mpb.Progress
	bar   *mpb.Bar
	g     *Globals
	// Counters are atomic, not under mu: mpb's render goroutine reads them
	// through the decorator while an event may be waiting on that goroutine
	// in bar.Increment.
	pushed, substituted, activated, failed atomic.Int64
	err                                    error // the first event that could not be written
	// brief: a large fleet without -v logs what needs a look (failures,
	// the rollout, pushes from this machine), not every host's every step;
	// the counters and the summary say the rest.
	brief bool
}

func (g *Globals) newDeployView(hosts int) *deployView {
	v := &deployView{start: time.Now(), log: g.stderr, brief: hosts > fullTableHosts && !g.Verbose}
	if g.JSON {
		v.json = g.stdout
		return v
	}
	if f, ok := g.stderrRaw.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		// Through a barWriter, so that a prompt can take the terminal
		// from the bar (terminal.go).
		bw := &barWriter{out: f}
		v.p = mpb.New(mpb.WithConsoleWriter(bw), mpb.WithWidth(30), mpb.WithRefreshRate(150*time.Millisecond))
		setDrawing(bw)
		v.bar = v.p.AddBar(int64(hosts),
			mpb.PrependDecorators(decor.Name("hosts "), decor.CountersNoUnit("%d/%d")),
			mpb.AppendDecorators(decor.Any(func(decor.Statistics) string { return v.summary() })),
		)
		v.log = v.p
		g.setLogWriter(v.p)
		v.g = g
	}
	return v
}

func (v *deployView) summary() string {
	return fmt.Sprintf(" pushed %d  substituted %d  activated %d  failed %d",
		v.pushed.Load(), v.substituted.Load(), v.activated.Load(), v.failed.Load())
}

// Event renders one event.
func (v *deployView) Event(e deploy.Event) {
	if v.json != nil {
		v.mu.Lock()
		defer v.mu.Unlock()
		err := json.NewEncoder(v.json).Encode(struct {
			Type string `json:"type"`
			deploy.Event
		}{"event", e})
		if err != nil && v.err == nil {
			v.err = fmt.Errorf("write events: %w", err)
		}
		return
	}
	switch {
	case e.Step == deploy.StepFinished:
		// The bar counts targets; a store that only receives closures is
		// in no wave.
		if v.bar != nil && e.Wave > 0 {
			v.bar.Increment()
		}
		return
	case e.Status == deploy.EventFailed:
		v.failed.Add(1)
	case e.Status == deploy.EventOK && e.Step == deploy.StepPush:
		v.pushed.Add(1)
	case e.Status == deploy.EventOK && e.Step == deploy.StepSubstitute:
		v.substituted.Add(1)
	case e.Status == deploy.EventOK && e.Step == deploy.StepActivate:
		v.activated.Add(1)
	}
	if e.Status == deploy.EventStart && e.Step != deploy.StepActivate {
		return // outcomes only; an activation's start matters for ordering
	}
	if e.Step == deploy.StepDone && e.Message == deploy.Unchanged {
		// One line per unchanged host: the summary's.
		return
	}
	if v.brief && e.Status != deploy.EventFailed && e.Step != deploy.StepRollout && e.Step != deploy.StepState && e.Step != deploy.StepPush {
		return
	}
	who := e.Instance
	if who == "" {
		who = "*"
	}
	wave := ""
	if e.Wave > 0 {
		wave = fmt.Sprintf(" [wave %d]", e.Wave)
	}
	msg := ""
	if e.Message != "" {
		msg = ": " + e.Message
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	fmt.Fprintf(v.log, "%6.1fs %s%s %s %s%s\n", time.Since(v.start).Seconds(), who, wave, e.Step, e.Status, msg)
}

// Close ends the progress bar, if any, before the summary is printed, and
// says whether the events could not be written.
func (v *deployView) Close() error {
	if v.bar != nil {
		v.bar.SetTotal(-1, true)
		v.p.Wait()
		setDrawing(nil)
		v.g.setLogWriter(nil)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}
