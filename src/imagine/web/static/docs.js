// Builds the API reference into #swagger-ui with the vendored Swagger UI. It is
// a file, not an inline script, so the page's policy can stay `script-src 'self'`;
// the page says where the OpenAPI document is in `data-openapi-url`.
"use strict";

(() => {
  const node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.dataset.openapiUrl,
    domNode: node,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Deep links would put a link inside each operation's expand button:
    // nested controls that keyboards and screen readers cannot tell apart.
    deepLinking: false,
    showExtensions: true,
    showCommonExtensions: true,
    // Never ask the public validator (another origin) about this document.
    validatorUrl: null,
  });
})();
