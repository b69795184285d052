(function () {
  const table = document.getElementById('cluster-table');
  if (!table) return;
  const body = table.tBodies[0], rows = Array.from(body.rows);
  const search = document.getElementById('search'), shown = document.getElementById('shown');
  // first click: largest, best separated, most mixed (least token-identity-like), first label
  const defaults = {size: 'desc', conductance: 'asc', purity: 'asc', label: 'asc'};
  const state = {sort: 'size', dir: 'desc', q: ''};
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get('sort') in defaults) state.sort = params.get('sort');
  state.dir = ['asc', 'desc'].includes(params.get('dir')) ? params.get('dir') : defaults[state.sort];
  state.q = params.get('q') || '';
  search.value = state.q;
  // a token matches by its text or by the symbols the pages show for its whitespace
  const shownAs = t => t.replace(/ /g, '\u00b7').replace(/\n/g, '\u23ce').replace(/\t/g, '\u21e5');
  const tokens = new Map(rows.map(r => [r, JSON.parse(r.dataset.tokens).flatMap(t => [t, shownAs(t)])
                                              .map(t => t.toLowerCase())]));
  function apply() {
    const sign = state.dir === 'asc' ? 1 : -1, key = state.sort;
    rows.sort((a, b) => sign * (Number(a.dataset[key]) - Number(b.dataset[key]))
                        || Number(a.dataset.label) - Number(b.dataset.label));
    rows.forEach(r => body.appendChild(r));
    const q = state.q.toLowerCase();
    let n = 0;
    for (const r of rows) {
      const hit = !q || tokens.get(r).some(t => t.includes(q));
      r.hidden = !hit; if (hit) n++;
    }
    shown.textContent = n + ' of ' + rows.length + ' clusters shown';
    for (const th of table.tHead.rows[0].cells) {
      const k = th.dataset.sort;
      if (!k) continue;
      th.setAttribute('aria-sort', k === key ? (state.dir === 'asc' ? 'ascending' : 'descending') : 'none');
      th.querySelector('.arrow').textContent = k === key ? (state.dir === 'asc' ? ' \u25b2' : ' \u25bc') : '';
    }
    const h = new URLSearchParams({sort: state.sort, dir: state.dir});
    if (state.q) h.set('q', state.q);
    history.replaceState(null, '', '#' + h.toString());
  }
  function sortBy(key) {
    state.dir = state.sort === key ? (state.dir === 'asc' ? 'desc' : 'asc') : defaults[key];
    state.sort = key; apply();
  }
  document.querySelectorAll('[data-sort-button]')
    .forEach(b => b.addEventListener('click', () => sortBy(b.dataset.sortButton)));
  search.addEventListener('input', () => { state.q = search.value; apply(); });
  apply();
})();
