package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	t.Run("log lines at the interval", func(t *testing.T) {
		var out bytes.Buffer
		p := &progress{w: &out, what: "rewrap", unit: "DEKs", total: 1000, interval: 10 * time.Second, now: clock, start: now, last: now}
		now = now.Add(5 * time.Second)
		p.update(100, "rewrapped 100")
		if out.Len() != 0 {
			t.Fatalf("a line before the interval: %q", out.String())
		}
		now = now.Add(5 * time.Second)
		p.update(250, "rewrapped 250")
		want := "keyctl: rewrap: 250/1000 DEKs (25%), 25/s, elapsed 10s, ETA 30s; rewrapped 250\n"
		if out.String() != want {
			t.Fatalf("log line %q, want %q", out.String(), want)
		}
		p.finish(1000, "done")
		if strings.Count(out.String(), "\n") != 1 {
			t.Fatalf("finish wrote a log line: %q", out.String())
		}
	})
	t.Run("bar redrawn in place", func(t *testing.T) {
		var out bytes.Buffer
		start := now
		p := &progress{w: &out, what: "rewrap", unit: "DEKs", total: 200, bar: true, interval: time.Hour, now: clock, start: start, last: start}
		now = now.Add(time.Second)
		p.update(100, "")
		s := out.String()
		if !strings.HasPrefix(s, "\r[===============               ] 100/200 DEKs (50%) 100/s, ETA 1s") || strings.Contains(s, "\n") {
			t.Fatalf("bar %q", s)
		}
		p.finish(200, "")
		if !strings.HasSuffix(out.String(), "\n") || !strings.Contains(out.String(), "200/200 DEKs (100%)") {
			t.Fatalf("final bar %q", out.String())
		}
	})
	t.Run("quiet and unknown total", func(t *testing.T) {
		var out bytes.Buffer
		q := &progress{w: &out, quiet: true, now: clock}
		q.update(5, "x")
		q.finish(5, "x")
		p := &progress{w: &out, what: "rewrap", unit: "DEKs", interval: time.Second, now: clock, start: now.Add(-2 * time.Second), last: now.Add(-2 * time.Second)}
		p.update(10, "")
		if got := out.String(); got != "keyctl: rewrap: 10 DEKs, 5/s, elapsed 2s\n" {
			t.Fatalf("unknown total: %q", got)
		}
	})
}
