// GraphiQL at GET /graphql, from the files shipped in the package (no CDN).
// With authentication on, add {"Authorization": "Bearer <key>"} in the Headers tab.
(function () {
  "use strict";
  var fetcher = GraphiQL.createFetcher({url: window.location.pathname});
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultEditorToolsVisibility: true,
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: false,
    defaultQuery: "{\n  models {\n    name\n  }\n}\n",
  }));
})();
