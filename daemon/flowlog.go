package daemon

import (
	"context"
	"time"

	"github.com/ctsyncd/ctsyncd/flowlog"
	"github.com/ctsyncd/ctsyncd/kernel"
)

// openFlowLog opens [log] flows, if set.
func (d *Daemon) openFlowLog() error {
	if d.cfg.Log.Flows == "" {
		return nil
	}
	l, err := flowlog.Open(d.cfg.Log.Flows, d.cfg.Log.FlowsFormat)
	if err != nil {
		return err
	}
	d.flowLog = l
	return nil
}

// logDestroyed writes a destroyed flow to the flow log. It runs on the
// listener goroutine.
func (d *Daemon) logDestroyed(ev *kernel.Event) {
	if d.flowLog != nil {
		d.flowLog.Log(time.Now(), &ev.Flow, &ev.Counters)
	}
}

// flushFlowLog writes the flow log's buffer every second and closes the
// log when ctx ends. A write error is logged once per second at most.
func (d *Daemon) flushFlowLog(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := d.flowLog.Close(); err != nil {
				d.log.Error("flow log", "err", err)
			}
			return nil
		case <-t.C:
			if err := d.flowLog.Flush(); err != nil {
				d.log.Error("flow log", "err", err)
			}
		}
	}
}

// reopenFlowLog reopens the flow log on SIGHUP (after logrotate).
func (d *Daemon) reopenFlowLog() {
	if d.flowLog == nil {
		return
	}
	if err := d.flowLog.Reopen(); err != nil {
		d.log.Error("reload: flow log not reopened", "err", err)
		return
	}
	d.log.Info("reload: flow log reopened", "path", d.cfg.Log.Flows)
}
