package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/ctsyncd/ctsyncd/flow"
)

// streamDeadline is how long a streaming client may take to accept each
// batch of lines before the connection is cut.
const streamDeadline = 30 * time.Second

// view is a flow as the API prints it.
func view(it *Item) flow.View {
	v := it.Flow.View()
	v.Origin = it.Origin
	v.IdleSecs = it.Idle.Seconds()
	return v
}

func (h *Handler) parseFlowQuery(r *http.Request, paged bool) (Query, Filter, error) {
	q, err := ParseQuery(r.URL.Query(), paged)
	if err != nil {
		return q, nil, err
	}
	f, err := h.opts.Flows.ParseFilter(q.Filter)
	if err != nil {
		return q, nil, err
	}
	return q, f, nil
}

// errStop ends a listing at its limit.
var errStop = errors.New("limit reached")

// listFlows streams the flows as NDJSON, one JSON object a line. An error
// after the first line is sent as a last line {"error": "..."}.
func (h *Handler) listFlows(w http.ResponseWriter, r *http.Request, _ identity) {
	q, f, err := h.parseFlowQuery(r, false)
	if err != nil {
		h.writeErr(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	n := 0
	started := false
	err = h.opts.Flows.List(r.Context(), q.Source, f, func(it *Item) error {
		if !started {
			started = true
			w.WriteHeader(http.StatusOK)
		}
		if n%4096 == 0 {
			rc.SetWriteDeadline(time.Now().Add(streamDeadline))
		}
		if err := enc.Encode(view(it)); err != nil {
			return err
		}
		n++
		if q.Limit > 0 && n >= q.Limit {
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	if err != nil && !started {
		h.writeErr(w, r, err)
		return
	}
	if err != nil {
		h.log.Warn("api: flow listing cut short", "source", q.Source, "sent", n, "err", err)
		enc.Encode(errorBody{Error: err.Error()})
	}
	bw.Flush()
}

// Page is the answer of GET /api/v1/flows/page.
type Page struct {
	Source Source      `json:"source"`
	Total  int         `json:"total"` // flows the filter selects
	Offset int         `json:"offset"`
	Limit  int         `json:"limit"`
	Sort   string      `json:"sort"`
	Order  string      `json:"order"`
	Flows  []flow.View `json:"flows"`
	Took   string      `json:"took"`
}

// pageFlows answers one sorted page, chosen in one streaming pass that
// keeps at most offset+limit flows.
func (h *Handler) pageFlows(w http.ResponseWriter, r *http.Request, _ identity) {
	start := time.Now()
	q, f, err := h.parseFlowQuery(r, true)
	if err != nil {
		h.writeErr(w, r, err)
		return
	}
	t := &topK{k: q.Offset + q.Limit, cmp: rowCompare(q.Sort, q.Desc)}
	err = h.opts.Flows.List(r.Context(), q.Source, f, func(it *Item) error {
		t.add(it)
		return nil
	})
	if err != nil {
		h.writeErr(w, r, err)
		return
	}
	rows := t.sorted()
	p := Page{Source: q.Source, Total: t.total, Offset: q.Offset, Limit: q.Limit, Sort: q.Sort, Order: "asc", Flows: []flow.View{}}
	if q.Desc {
		p.Order = "desc"
	}
	for i := q.Offset; i < len(rows); i++ {
		it := Item{Flow: &rows[i].f, Origin: rows[i].origin, Idle: time.Duration(rows[i].idle)}
		p.Flows = append(p.Flows, view(&it))
	}
	p.Took = time.Since(start).Round(time.Microsecond).String()
	writeJSON(w, http.StatusOK, p)
}

// filterForChange parses the query of a DELETE or PATCH: the kernel's
// table only, and never an empty filter.
func (h *Handler) filterForChange(r *http.Request) (Filter, error) {
	q, f, err := h.parseFlowQuery(r, false)
	if err != nil {
		return nil, err
	}
	if q.Source != SourceKernel {
		return nil, &ParamError{Param: "source", Problem: "flows are deleted and changed in the kernel's table only (source=kernel)"}
	}
	if q.Limit != 0 {
		return nil, &ParamError{Param: "limit", Problem: "not allowed here: the change applies to every flow the filter selects"}
	}
	if f.Empty() {
		return nil, &ParamError{Param: "filter", Problem: "empty: refusing to touch every flow; give at least one of proto, src, dst, sport, dport, state, mark, zone"}
	}
	return f, nil
}

// Count answers DELETE and PATCH.
type Count struct {
	Deleted *int   `json:"deleted,omitempty"`
	Updated *int   `json:"updated,omitempty"`
	Filter  string `json:"filter"`
}

func (h *Handler) deleteFlows(w http.ResponseWriter, r *http.Request, who identity) {
	f, err := h.filterForChange(r)
	if err != nil {
		h.writeErr(w, r, err)
		return
	}
	n, err := h.opts.Flows.Delete(r.Context(), f)
	h.auditLog(r, who, "delete flows", f.String(), n, err)
	if err != nil {
		h.writeErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, Count{Deleted: &n, Filter: f.String()})
}

func (h *Handler) patchFlows(w http.ResponseWriter, r *http.Request, who identity) {
	f, err := h.filterForChange(r)
	if err != nil {
		h.writeErr(w, r, err)
		return
	}
	var c Change
	if err := decodeBody(r, &c); err != nil {
		h.writeErr(w, r, err)
		return
	}
	if c.Mark == nil && c.Timeout == nil {
		h.writeErr(w, r, &ParamError{Param: "body", Problem: "nothing to change: give mark and/or timeout"})
		return
	}
	if c.Timeout != nil && *c.Timeout == 0 {
		h.writeErr(w, r, &ParamError{Param: "timeout", Problem: "0 is not a timeout; to remove flows, DELETE them"})
		return
	}
	n, err := h.opts.Flows.Update(r.Context(), f, c)
	action := "update flows"
	if c.Mark != nil {
		action += " mark=" + itoa(uint64(*c.Mark))
	}
	if c.Timeout != nil {
		action += " timeout=" + itoa(uint64(*c.Timeout))
	}
	h.auditLog(r, who, action, f.String(), n, err)
	if err != nil {
		h.writeErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, Count{Updated: &n, Filter: f.String()})
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request, _ identity) {
	s, err := h.opts.Status.Status(r.Context())
	if err != nil {
		h.writeErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (h *Handler) listExpectations(w http.ResponseWriter, r *http.Request, _ identity) {
	if len(r.URL.Query()) > 0 {
		for k := range r.URL.Query() {
			h.writeErr(w, r, &ParamError{Param: k, Problem: "unknown parameter: expectations are listed whole"})
			return
		}
	}
	if h.opts.Expectations == nil {
		writeError(w, http.StatusNotImplemented, "", "this build cannot list expectations")
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	started := false
	err := h.opts.Expectations.ListExpectations(r.Context(), func(v any) error {
		if !started {
			started = true
			w.WriteHeader(http.StatusOK)
		}
		return enc.Encode(v)
	})
	if err != nil && !started {
		h.writeErr(w, r, err)
		return
	}
	if err != nil {
		enc.Encode(errorBody{Error: err.Error()})
	}
	bw.Flush()
}

// action runs one of the daemon's operations. It takes no parameters.
func (h *Handler) action(name string) func(w http.ResponseWriter, r *http.Request, who identity) {
	return func(w http.ResponseWriter, r *http.Request, who identity) {
		for k := range r.URL.Query() {
			h.writeErr(w, r, &ParamError{Param: k, Problem: "unknown parameter: actions take none"})
			return
		}
		rep, n, err := h.opts.Actions.Action(r.Context(), name)
		h.auditLog(r, who, name, "", n, err)
		if err != nil {
			if rep != nil && !errors.Is(err, ErrUnavailable) {
				writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error(), "report": rep})
				return
			}
			h.writeErr(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	}
}
