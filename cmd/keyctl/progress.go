package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress reports a long operation on stderr: a redrawn bar with rate and
// ETA on a terminal, a log line every interval otherwise, nothing when
// quiet. It is safe for concurrent use.
type progress struct {
	mu       sync.Mutex
	w        io.Writer
	what     string // "rewrap", for log lines
	unit     string // "DEKs"
	total    int    // 0 when unknown
	bar      bool
	quiet    bool
	interval time.Duration
	start    time.Time
	last     time.Time
	now      func() time.Time
}

// progressModes are the values of --progress.
var progressModes = []string{"auto", "bar", "log", "none"}

// newProgress returns a reporter for mode (see progressModes); auto draws a
// bar when stderr is a terminal and logs every interval otherwise.
func (a *app) newProgress(mode, what, unit string, total int, interval time.Duration) (*progress, error) {
	p := &progress{w: a.stderr, what: what, unit: unit, total: total, interval: interval, now: time.Now}
	switch mode {
	case "auto", "":
		p.bar = a.stderrIsTerminal()
	case "bar":
		p.bar = true
	case "log":
	case "none":
		p.quiet = true
	default:
		return nil, usagef("--progress %q: want one of %s", mode, strings.Join(progressModes, ", "))
	}
	if interval <= 0 {
		return nil, usagef("--progress-interval must be positive")
	}
	p.start = p.now()
	p.last = p.start
	return p, nil
}

// stderrIsTerminal reports whether stderr is a terminal.
func (a *app) stderrIsTerminal() bool {
	f, ok := a.stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// update reports that done items are finished; extra is appended (counts).
func (p *progress) update(done int, extra string) {
	if p == nil || p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	minGap := p.interval
	if p.bar {
		minGap = 200 * time.Millisecond
	}
	if now.Sub(p.last) < minGap {
		return
	}
	p.last = now
	p.draw(now, done, extra)
}

// finish draws the final state and ends the bar's line.
func (p *progress) finish(done int, extra string) {
	if p == nil || p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar {
		p.draw(p.now(), done, extra)
		fmt.Fprintln(p.w)
	}
}

func (p *progress) draw(now time.Time, done int, extra string) {
	elapsed := now.Sub(p.start)
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed.Seconds()
	}
	eta := ""
	if p.total > 0 && rate > 0 && done < p.total {
		eta = ", ETA " + time.Duration(float64(p.total-done)/rate*float64(time.Second)).Round(time.Second).String()
	}
	count := fmt.Sprintf("%d %s", done, p.unit)
	pct := ""
	if p.total > 0 {
		count = fmt.Sprintf("%d/%d %s", done, p.total, p.unit)
		pct = fmt.Sprintf(" (%.0f%%)", 100*float64(done)/float64(p.total))
	}
	if extra != "" {
		extra = "; " + extra
	}
	if !p.bar {
		fmt.Fprintf(p.w, "keyctl: %s: %s%s, %.0f/s, elapsed %s%s%s\n", p.what, count, pct, rate, elapsed.Round(time.Second), eta, extra)
		return
	}
	const width = 30
	fill := 0
	if p.total > 0 {
		fill = min(width, done*width/p.total)
	}
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	line := fmt.Sprintf("\r[%s] %s%s %.0f/s%s%s", bar, count, pct, rate, eta, extra)
	fmt.Fprint(p.w, line+"\x1b[K")
}
