package sessions

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"strings"

	"github.com/medrelay/medrelay/internal/connections"
)

// Register adds the patient-facing routes to mux.
func (m *Manager) Register(handle func(pattern string, h http.Handler)) {
	handle("GET /connect/{session}", http.HandlerFunc(m.servePicker))
	handle("GET /connect/{session}/search", http.HandlerFunc(m.serveSearch))
	handle("POST /connect/{session}/go", http.HandlerFunc(m.serveGo))
	handle("GET /oauth/callback", http.HandlerFunc(m.serveCallback))
}

func nonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// pageHeaders: nothing outside the agent is loaded; the page's one script
// runs by nonce; forms may go on to the portal (https) after our redirect.
func pageHeaders(w http.ResponseWriter, n string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; script-src 'nonce-"+n+"'; connect-src 'self'; form-action 'self' https: http:; frame-ancestors 'none'; base-uri 'none'")
}

type pickerData struct {
	Nonce       string
	Session     string
	Query       string
	Recommended []Source
	Results     []Source
	Searched    bool
}

// servePicker: direct sessions redirect straight to the portal; picker
// sessions show the search page (which also works without script: the
// search box submits a plain GET).
func (m *Manager) servePicker(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	s, err := m.Get(ctx, "", r.PathValue("session"))
	if err != nil {
		m.problem(w, http.StatusNotFound, "This link is not valid",
			"The link you followed does not match a sign-in request. Go back to the app that sent you here and start again.")
		return
	}
	if st := s.EffectiveState(m.now()); st != Open {
		m.closed(w, s, st)
		return
	}
	if s.SourceID != "" {
		dest, err := m.begin(ctx, s, s.SourceID)
		if err != nil {
			m.startFailed(w, err)
			return
		}
		http.Redirect(w, r, dest, http.StatusFound)
		return
	}
	d := pickerData{Nonce: nonce(), Session: s.ID, Query: strings.TrimSpace(r.URL.Query().Get("q"))}
	for _, id := range s.Recommend {
		if src, err := m.dir.Source(ctx, id); err == nil {
			d.Recommended = append(d.Recommended, src)
		}
	}
	if d.Query != "" {
		d.Searched = true
		d.Results, _ = m.dir.Search(ctx, d.Query, 20)
	}
	pageHeaders(w, d.Nonce)
	if err := pickerPage.Execute(w, d); err != nil {
		m.log.Warn("render picker", "err", err)
	}
}

// serveSearch answers the picker's script with JSON.
func (m *Manager) serveSearch(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	s, err := m.Get(ctx, "", r.PathValue("session"))
	if err != nil || s.EffectiveState(m.now()) != Open {
		http.Error(w, `{"error":"session not open"}`, http.StatusNotFound)
		return
	}
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	var out []Source
	if q != "" {
		out, err = m.dir.Search(ctx, q, 20)
		if err != nil {
			http.Error(w, `{"error":"search failed"}`, http.StatusInternalServerError)
			return
		}
	}
	type item struct {
		ID, Name, Portal, Place, Logo string
	}
	items := make([]item, 0, len(out))
	for _, s := range out {
		items = append(items, item{ID: s.ID, Name: s.Name, Portal: s.PortalName, Place: place(s), Logo: s.Logo})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(items)
}

// serveGo: the patient chose a source.
func (m *Manager) serveGo(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	s, err := m.Get(ctx, "", r.PathValue("session"))
	if err != nil {
		m.problem(w, http.StatusNotFound, "This link is not valid", "Go back to the app that sent you here and start again.")
		return
	}
	if st := s.EffectiveState(m.now()); st != Open {
		m.closed(w, s, st)
		return
	}
	src := r.FormValue("source")
	if src == "" || (s.SourceID != "" && src != s.SourceID) {
		m.problem(w, http.StatusBadRequest, "Please choose a provider", "Go back and choose the provider where you have a patient portal account.")
		return
	}
	dest, err := m.begin(ctx, s, src)
	if err != nil {
		m.startFailed(w, err)
		return
	}
	http.Redirect(w, r, dest, http.StatusSeeOther)
}

// serveCallback is the OAuth redirect URI.
func (m *Manager) serveCallback(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	cb, err := m.auth.Complete(ctx, r.URL.Query())
	if err != nil {
		m.log.Warn("oauth callback refused", "err", err)
		m.problem(w, http.StatusBadRequest, "This sign-in could not be finished",
			"The sign-in link was already used, has expired, or did not come from your provider. Go back to the app that sent you here and start again.")
		return
	}
	ret, err := m.finish(ctx, cb)
	if err != nil {
		m.log.Error("finish authorization", "connection", cb.ConnectionID, "err", err)
		m.problem(w, http.StatusInternalServerError, "Something went wrong on our side",
			"Your provider answered, but we could not save the connection. Go back to the app and try again in a few minutes.")
		return
	}
	http.Redirect(w, r, ret, http.StatusFound)
}

// finish applies the authorizer's outcome to the connection and session.
func (m *Manager) finish(ctx context.Context, cb Callback) (string, error) {
	// The patient's browser may give up; the outcome must still be saved.
	ctx = context.WithoutCancel(ctx)
	c, err := m.conns.Get(ctx, cb.ConnectionID)
	if err != nil {
		return "", err
	}
	if cb.Grant != nil {
		if _, err := m.conns.Activate(ctx, c.ID, *cb.Grant); err != nil {
			return "", err
		}
		return m.complete(ctx, c.SessionID, c.ID, true, "", "")
	}
	reason := cb.Error
	if cb.Description != "" {
		reason += ": " + cb.Description
	}
	if _, err := m.conns.Fail(ctx, c.ID, reason); err != nil && !errors.Is(err, connections.ErrBadState) {
		return "", err
	}
	return m.complete(ctx, c.SessionID, c.ID, false, cb.Error, cb.Description)
}

func (m *Manager) closed(w http.ResponseWriter, s Session, st State) {
	if st == Expired {
		m.problem(w, http.StatusGone, "This link has expired",
			"Sign-in links work for a limited time. Go back to the app that sent you here and start again.")
		return
	}
	m.problem(w, http.StatusGone, "You are already done here",
		"This sign-in was already finished. You can close this page and return to the app.")
}

func (m *Manager) startFailed(w http.ResponseWriter, err error) {
	m.log.Warn("authorization could not start", "err", err)
	m.problem(w, http.StatusBadGateway, "We could not reach your provider right now",
		"Your provider's sign-in page is not available at the moment, or this provider is not set up yet. Please try again later, or choose another provider.")
}

func (m *Manager) problem(w http.ResponseWriter, status int, title, text string) {
	n := nonce()
	pageHeaders(w, n)
	w.WriteHeader(status)
	_ = problemPage.Execute(w, map[string]string{"Title": title, "Text": text})
}

func place(s Source) string {
	switch {
	case s.City != "" && s.State != "":
		return s.City + ", " + s.State
	case s.State != "":
		return s.State
	}
	return s.City
}

var funcs = template.FuncMap{"place": place}

const style = `body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:40rem;margin:0 auto;padding:1.5rem;color:#1b1b1b;line-height:1.5}
h1{font-size:1.5rem}label{font-weight:600;display:block;margin-bottom:.25rem}
input[type=search]{font-size:1.1rem;padding:.6rem;width:100%;box-sizing:border-box;border:2px solid #555;border-radius:6px}
input[type=search]:focus,button:focus{outline:3px solid #1a5fb4;outline-offset:2px}
ul{list-style:none;padding:0}li{margin:.5rem 0}
button.src{width:100%;text-align:left;font:inherit;font-size:1rem;padding:.75rem;border:1px solid #888;border-radius:6px;background:#fff;cursor:pointer}
button.src:hover{background:#eef4fc}.muted{color:#555;font-size:.9rem}img{height:1.5rem;vertical-align:middle;margin-right:.5rem}
.sr{position:absolute;left:-9999px}`

var pickerPage = template.Must(template.New("picker").Funcs(funcs).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Connect your health records</title><style>` + style + `</style></head>
<body><main>
<h1>Connect your health records</h1>
<p>Find the hospital, clinic or insurer where you have a patient portal account. You will sign in there and choose what to share.</p>
{{if .Recommended}}<h2>Suggested for you</h2>
<form method="post" action="/connect/{{.Session}}/go"><ul>
{{range .Recommended}}<li><button class="src" type="submit" name="source" value="{{.ID}}">{{if .Logo}}<img alt="" src="{{.Logo}}">{{end}}<strong>{{.Name}}</strong>{{with place .}} <span class="muted">· {{.}}</span>{{end}}{{if .PortalName}}<br><span class="muted">Sign in with {{.PortalName}}</span>{{end}}</button></li>
{{end}}</ul></form>{{end}}
<form method="get" action="/connect/{{.Session}}" role="search">
<label for="q">Search for your provider</label>
<input id="q" name="q" type="search" value="{{.Query}}" autocomplete="off" placeholder="Hospital, clinic or city" aria-describedby="hint">
<p id="hint" class="muted">For example: "Children's Mercy Kansas City" or "Mayo Rochester".</p>
<noscript><button type="submit">Search</button></noscript>
</form>
<p id="status" class="sr" role="status" aria-live="polite"></p>
<form method="post" action="/connect/{{.Session}}/go"><ul id="results">
{{range .Results}}<li><button class="src" type="submit" name="source" value="{{.ID}}">{{if .Logo}}<img alt="" src="{{.Logo}}">{{end}}<strong>{{.Name}}</strong>{{with place .}} <span class="muted">· {{.}}</span>{{end}}{{if .PortalName}}<br><span class="muted">Sign in with {{.PortalName}}</span>{{end}}</button></li>
{{end}}</ul></form>
{{if and .Searched (not .Results)}}<p>No provider matches "{{.Query}}". Check the spelling, or try the name of the city.</p>{{end}}
</main>
<script nonce="{{.Nonce}}">
(function(){
  var q=document.getElementById('q'),list=document.getElementById('results'),status=document.getElementById('status'),t;
  var base=location.pathname.replace(/\/$/,'');
  function el(tag,text,cls){var e=document.createElement(tag);if(text)e.textContent=text;if(cls)e.className=cls;return e;}
  function render(items,query){
    list.textContent='';
    items.forEach(function(s){
      var li=el('li'),b=el('button',null,'src');b.type='submit';b.name='source';b.value=s.ID;
      if(s.Logo){var i=el('img');i.alt='';i.src=s.Logo;b.appendChild(i);}
      b.appendChild(el('strong',s.Name));
      if(s.Place)b.appendChild(el('span',' · '+s.Place,'muted'));
      if(s.Portal){b.appendChild(el('br'));b.appendChild(el('span','Sign in with '+s.Portal,'muted'));}
      li.appendChild(b);list.appendChild(li);
    });
    status.textContent=query?(items.length?items.length+' providers found':'No provider matches '+query):'';
  }
  q.addEventListener('input',function(){
    clearTimeout(t);var v=q.value.trim();
    t=setTimeout(function(){
      if(!v){render([],'');return;}
      fetch(base+'/search?q='+encodeURIComponent(v),{headers:{'Accept':'application/json'}})
        .then(function(r){return r.ok?r.json():[];}).then(function(items){if(q.value.trim()===v)render(items,v);})
        .catch(function(){status.textContent='Search is not available right now. Press Enter to search.';});
    },150);
  });
})();
</script></body></html>`))

var problemPage = template.Must(template.New("problem").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{.Title}}</title><style>` + style + `</style></head>
<body><main><h1>{{.Title}}</h1><p>{{.Text}}</p></main></body></html>`))
